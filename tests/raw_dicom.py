"""DICOM files that no well-behaved writer makes, built byte by byte: an element written
twice, or out of tag order. pydicom's data sets cannot hold them, so these helpers edit
the Part 10 bytes of an Explicit VR Little Endian file."""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ui_element(group: int, element: int, uid: str) -> bytes:
    """One UI element, Explicit VR Little Endian, padded to even length with NUL."""
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HH2sH", group, element, b"UI", len(value)) + value


def insert_before(data: bytes, anchor: bytes, extra: bytes) -> bytes:
    """`extra` inserted just before the one occurrence of `anchor` (an encoded element)."""
    assert data.count(anchor) == 1, "the anchor element must occur exactly once"
    at = data.index(anchor)
    return data[:at] + extra + data[at:]


def with_study_uid_first(ds: Dataset, first: str) -> bytes:
    """`ds` as a file with two StudyInstanceUID elements: `first`, then its own."""
    data = part10(ds)
    own = ui_element(0x0020, 0x000D, str(ds.StudyInstanceUID))
    return insert_before(data, own, ui_element(0x0020, 0x000D, first))
