"""The lossless codec recommended for the edge (CharLS JPEG-LS through pydicom's pyjpegls
plugin, bench/codecs.py) gives back every pixel: each generator modality and a set of
pydicom's own files, decoded by another JPEG-LS implementation (libjpeg, pylibjpeg)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

pytest.importorskip("jpeg_ls", reason="pyjpegls (CharLS) is not installed")

from bench.codecs import Encoder, pydicom_encoder
from bench.codecs_corpus import Instance, decoded, generator_instances, same_pixels
from deploy.samples.studies import MODALITIES

ENCODE = pydicom_encoder(JPEGLSLossless, "pyjpegls")
INDEPENDENT = "pylibjpeg"  # libjpeg's JPEG-LS decoder, not CharLS
KEPT = ("SOPInstanceUID", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")
PYDICOM_FILES = (
    "CT_small.dcm",  # 16-bit signed
    "MR_small.dcm",  # 16-bit signed
    "MR_small_implicit.dcm",  # implicit VR little endian
    "examples_overlay.dcm",  # 12 of 16 bits unsigned
    "examples_palette.dcm",  # 8-bit palette colour
    "examples_rgb_color.dcm",  # 8-bit RGB
    "SC_rgb_jpeg_dcmd.dcm",  # 8-bit RGB, implicit VR
)


def assert_round_trip(encode: Encoder, instance: Instance) -> bytes:
    """Encode, then decode with an independent decoder: every pixel must come back."""
    out = encode(instance.dicom)
    ds = dcmread(io.BytesIO(out))
    original = dcmread(io.BytesIO(instance.dicom), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    for keyword in KEPT:
        assert ds.get(keyword) == original.get(keyword), keyword
    assert same_pixels(instance.pixels, decoded(out, INDEPENDENT)), f"{instance.name} differs"
    return out


@pytest.fixture(scope="module")
def generated() -> list[Instance]:
    return generator_instances({"CT": 2, "MR": 2, "DX": 1})


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_generator_modality_round_trips_exactly(
    generated: list[Instance], modality: str
) -> None:
    instances = [i for i in generated if i.group == modality]
    assert instances
    for instance in instances:
        out = assert_round_trip(ENCODE, instance)
        assert len(out) * 2 < len(instance.dicom), "not compressed"


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_test_files_round_trip_exactly(name: str) -> None:
    dicom = get_testdata_file(name, read=False)
    assert isinstance(dicom, str)
    with open(dicom, "rb") as f:
        raw = f.read()
    assert_round_trip(ENCODE, Instance("pydicom", name, raw, decoded(raw)))


def _variant(instance: Instance, pixels: np.ndarray, **attributes: int) -> Instance:
    ds = dcmread(io.BytesIO(instance.dicom))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Instance(
        instance.group, f"{instance.name}-variant", buf.getvalue(), decoded(buf.getvalue())
    )


def test_signed_12_bit_multi_frame_and_8_bit_round_trip(generated: list[Instance]) -> None:
    ct = next(i for i in generated if i.group == "CT")
    signed = (ct.pixels.astype(np.int16) - 2048).astype(np.int16)  # -2048..2047 in 12 bits
    assert signed.min() < 0
    assert_round_trip(ENCODE, _variant(ct, signed, PixelRepresentation=1))
    mr = [i for i in generated if i.group == "MR"]
    frames = np.stack([i.pixels for i in mr])
    assert_round_trip(ENCODE, _variant(mr[0], frames, NumberOfFrames=len(mr)))
    eight = (mr[0].pixels >> 4).astype(np.uint8)
    assert_round_trip(ENCODE, _variant(mr[0], eight, BitsAllocated=8, BitsStored=8, HighBit=7))


def test_the_check_catches_a_lossy_encoder(generated: list[Instance]) -> None:
    def near_lossless_labelled_lossless(dicom: bytes) -> bytes:
        ds = dcmread(io.BytesIO(dicom))
        ds.compress(
            JPEGLSNearLossless, jls_error=2, encoding_plugin="pyjpegls", generate_instance_uid=False
        )
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    with pytest.raises(AssertionError, match="differs"):
        assert_round_trip(near_lossless_labelled_lossless, generated[0])


def test_the_check_catches_an_encoder_that_loses_bits(generated: list[Instance]) -> None:
    def keeps_the_low_8_bits(dicom: bytes) -> bytes:
        ds = dcmread(io.BytesIO(dicom))
        ds.compress(
            JPEGLSLossless,
            ds.pixel_array & 0xFF,
            encoding_plugin="pyjpegls",
            generate_instance_uid=False,
        )
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    with pytest.raises(AssertionError, match="differs"):
        assert_round_trip(keeps_the_low_8_bits, generated[0])
