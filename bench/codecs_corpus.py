"""The instances the codec bench compresses: the project's generator and pydicom's own files.

Every instance is kept as the bytes of a DICOM file with an uncompressed transfer syntax
(what a modality sends the edge), beside its pixels as pydicom's native decoder reads
them: the reference a lossless round trip must give back exactly.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.pixels import pixel_array

from deploy.samples.studies import MODALITIES, make_study

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
PYDICOM_GROUP = "pydicom files"


@dataclass(frozen=True)
class Instance:
    group: str  # a generator modality, or PYDICOM_GROUP
    name: str
    dicom: bytes
    pixels: np.ndarray


def decoded(dicom: bytes, plugin: str = "") -> np.ndarray:
    """The pixels of a DICOM file, as stored (no colour conversion), with one decoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a JPEG-LS precision other than Bits Stored
        return pixel_array(io.BytesIO(dicom), decoding_plugin=plugin, as_rgb=False)


def same_pixels(original: np.ndarray, other: np.ndarray) -> bool:
    """Pixel-identical: same shape and every value equal (an exact comparison)."""
    return original.shape == other.shape and bool(np.array_equal(original, other))


def generator_instances(counts: dict[str, int], seed: int = 1307) -> list[Instance]:
    """`counts[modality]` instances of one study per generator modality (CT, MR, DX...)."""
    out = []
    for modality in MODALITIES:
        study = make_study(seed, modality, instances=counts.get(modality, 1))
        for index, ds in enumerate(study.instances()):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            dicom = buf.getvalue()
            out.append(Instance(modality, f"{modality}-{index + 1}", dicom, decoded(dicom)))
    return out


def signed_ct_instances(count: int, seed: int = 1307) -> list[Instance]:
    """The generator's CT as many scanners send it: signed 12 bits stored (HU values,
    intercept 0), which the generator itself does not make."""
    out = []
    for index, ds in enumerate(make_study(seed, "CT", instances=count).instances()):
        hu = ds.pixel_array.astype(np.int16) - 1024
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.PixelData = np.clip(hu, -2048, 2047).astype(np.int16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        dicom = buf.getvalue()
        out.append(Instance("CT signed12", f"CTs-{index + 1}", dicom, decoded(dicom)))
    return out


def _losslessly_compressible(ds: object) -> bool:
    """8- or 16-bit, 1 or 3 samples, not chroma-subsampled: what a lossless codec takes."""
    return (
        getattr(ds, "BitsAllocated", None) in (8, 16)
        and getattr(ds, "SamplesPerPixel", None) in (1, 3)
        and "422" not in str(getattr(ds, "PhotometricInterpretation", ""))
        and "420" not in str(getattr(ds, "PhotometricInterpretation", ""))
    )


def pydicom_instances(limit_bytes: int = 16 << 20) -> list[Instance]:
    """pydicom's own uncompressed test files (and pydicom-data's, where installed) that
    a lossless codec can take: 8/16-bit, mono, palette and RGB, signed and unsigned,
    single and multi-frame, little and big endian."""
    out = []
    for path in sorted(set(get_testdata_files("*")), key=lambda p: Path(p).name):
        if Path(path).stat().st_size > limit_bytes:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path)
                syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
                if "PixelData" not in ds or syntax not in UNCOMPRESSED:
                    continue
                if not _losslessly_compressible(ds):
                    continue
                dicom = Path(path).read_bytes()
                pixels = decoded(dicom)
        except Exception:  # noqa: S112 - unreadable test files (truncated on purpose) are skipped
            continue
        out.append(Instance(PYDICOM_GROUP, Path(path).name, dicom, pixels))
    return out


def describe(instance: Instance) -> str:
    """One line on what an instance is (bits, signedness, samples, frames, syntax)."""
    ds = dcmread(io.BytesIO(instance.dicom), stop_before_pixels=True)
    sign = "signed" if ds.get("PixelRepresentation", 0) else "unsigned"
    return (
        f"{instance.name}: {ds.BitsAllocated}/{ds.BitsStored} bit {sign}, "
        f"{ds.PhotometricInterpretation}, {ds.Rows}x{ds.Columns}, "
        f"{ds.get('NumberOfFrames', 1)} frame(s), {ds.file_meta.TransferSyntaxUID.name}"
    )
