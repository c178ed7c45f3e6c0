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

from .errors import CompressorUnavailable, ConfigurationError

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


def transfer_syntax_of(dicom: bytes) -> str | None:
    """Transfer syntax from the file meta information; None if the file is not DICOM."""
    try:
        ds = dcmread(io.BytesIO(dicom), stop_before_pixels=True, specific_tags=[])
    except (InvalidDicomError, EOFError, ValueError, OSError):
        return None
    uid = getattr(ds.file_meta, "TransferSyntaxUID", None)
    return str(uid) if uid else None


def has_pixel_data(dicom: bytes) -> bool:
    # (7FE0,0010) little-endian tag bytes; an instance without pixels has nothing to compress.
    return b"\xe0\x7f\x10\x00" in dicom


def compress(
    dicom: bytes, policy: CompressionPolicy, transcode: Callable[[bytes, str], bytes]
) -> bytes | None:
    """The compressed instance, or None to keep it as received.

    `transcode(dicom, target)` is the encoder for the target syntax (imgcloud.edge_app
    picks it). A failure (unsupported bit depth, photometric interpretation, a codec crash)
    keeps the original: an instance is never lost because it could not be compressed.
    """
    syntax = transfer_syntax_of(dicom)
    target = policy.plan(syntax) if syntax else None
    if target is None or not has_pixel_data(dicom):
        return None
    try:
        out = transcode(dicom, target)
    except CompressorUnavailable:
        raise  # not this instance's fault: forwarding is retried, nothing leaves uncompressed
    except Exception as exc:
        log.warning("kept as received (%s could not transcode to %s): %s", syntax, target, exc)
        return None
    return out if len(out) < len(dicom) else None
