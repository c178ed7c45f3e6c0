"""Lossless compression of each instance at the edge, before it leaves the hospital.

Only uncompressed instances are transcoded. Anything already compressed is kept exactly as
received: a lossy syntax must never be recompressed (generation loss), and a lossless one
gains little and would cost CPU and risk.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from .errors import ConfigurationError

log = logging.getLogger(__name__)

POLICIES = {
    "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",  # process 14, selection value 1
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
    "keep": "",
}
UNCOMPRESSED = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
}


@dataclass(frozen=True)
class CompressionPolicy:
    name: str

    @classmethod
    def from_name(cls, name: str, setting: str = "ImagingCloud.Compression") -> CompressionPolicy:
        if name not in POLICIES:
            raise ConfigurationError(f"{setting}: must be one of {', '.join(POLICIES)}")
        return cls(name)

    @property
    def target(self) -> str:
        return POLICIES[self.name]

    def plan(self, transfer_syntax: str) -> str | None:
        """The syntax to transcode to, or None to keep the instance as received."""
        if not self.target or transfer_syntax not in UNCOMPRESSED:
            return None
        return self.target


@dataclass(frozen=True)
class PixelModule:
    """What decides whether an instance may be handed to the transcoder at all."""

    transfer_syntax: str
    signed: bool
    bits_allocated: int
    bits_stored: int
    rows: int
    columns: int


PIXEL_TAGS = ["PixelRepresentation", "BitsAllocated", "BitsStored", "Rows", "Columns"]


def pixel_module_of(dicom: bytes) -> PixelModule | None:
    """The transfer syntax and pixel description, parsed without the pixel data; None if
    the file is not DICOM or has no transfer syntax."""
    try:
        ds = dcmread(io.BytesIO(dicom), stop_before_pixels=True, specific_tags=PIXEL_TAGS)
    except (InvalidDicomError, EOFError, ValueError, OSError):
        return None
    uid = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if not uid:
        return None

    def number(name: str) -> int:
        try:
            return int(ds.get(name, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return PixelModule(
        str(uid),
        number("PixelRepresentation") == 1,
        number("BitsAllocated"),
        number("BitsStored"),
        number("Rows"),
        number("Columns"),
    )


def transfer_syntax_of(dicom: bytes) -> str | None:
    """Transfer syntax from the file meta information."""
    module = pixel_module_of(dicom)
    return module.transfer_syntax if module else None


JPEG_LS_LOSSLESS = POLICIES["jpeg-ls-lossless"]
# Below this many rows or columns a lossless codec gains nothing.
SMALLEST_SIDE = 16


def unsafe_for_transcoder(module: PixelModule, target: str) -> str | None:
    """Why this instance must not reach Orthanc's DCMTK transcoder for `target`, or None.

    DCMTK 3.6.9's JPEG-LS encoder (its bundled CharLS, in Orthanc 1.12.7) fails an
    assertion and aborts the whole Orthanc on signed pixels with fewer bits stored than
    allocated, as many CT scanners send them (12 of 16 bits), and on tiny images
    (bench.codecs, 2026-12-07): an abort is not an exception the edge could catch, so such
    instances are kept as received."""
    if target != JPEG_LS_LOSSLESS:
        return None
    if module.signed and module.bits_stored < module.bits_allocated:
        return f"signed {module.bits_stored} of {module.bits_allocated} bits"
    if min(module.rows, module.columns) < SMALLEST_SIDE:
        return f"{module.rows}x{module.columns} pixels"
    return None


def has_pixel_data(dicom: bytes) -> bool:
    # (7FE0,0010) little-endian tag bytes; an instance without pixels has nothing to compress.
    return b"\xe0\x7f\x10\x00" in dicom


def compress(
    dicom: bytes, policy: CompressionPolicy, transcode: Callable[[bytes, str], bytes]
) -> bytes | None:
    """The compressed instance, or None to keep it as received.

    A transcoder failure (unsupported bit depth, photometric interpretation...) keeps the
    original: an instance is never lost because it could not be compressed.
    """
    module = pixel_module_of(dicom)
    syntax = module.transfer_syntax if module else None
    target = policy.plan(syntax) if module and syntax else None
    if module is None or target is None or not has_pixel_data(dicom):
        return None
    unsafe = unsafe_for_transcoder(module, target)
    if unsafe is not None:
        log.warning("kept as received (%s to %s would abort DCMTK): %s", syntax, target, unsafe)
        return None
    try:
        out = transcode(dicom, target)
    except Exception as exc:
        log.warning("kept as received (%s could not transcode to %s): %s", syntax, target, exc)
        return None
    return out if len(out) < len(dicom) else None
