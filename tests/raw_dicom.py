"""DICOM files that no well-behaved writer makes, built byte by byte: an element written
twice, or out of tag order. pydicom's data sets cannot hold them, so these helpers edit
the Part 10 bytes of an Explicit VR Little Endian file."""

from __future__ import annotations

import io
import struct
import zlib

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian


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


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One element, Explicit VR Little Endian, with the length field that `vr` has in the
    standard (2 bytes, or 2 reserved and 4 for OB, SQ, UN, ...); any other VR, 2 bytes."""
    if len(value) % 2:
        value += b"\0"
    if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def data_set_start(data: bytes) -> int:
    """The offset of a Part 10 file's first data set element (past the file meta)."""
    (meta_length,) = struct.unpack_from("<I", data, 140)  # (0002,0000)'s value
    return 144 + meta_length


def unknown_vr_polyglot(ds: Dataset, study_uid: str) -> bytes:
    """The reviewer's file: `ds` with, first in its data set, (0008,0001) of VR 'ZZ' and
    (0008,0003) OB that hides a SOP, a patient ID, `study_uid` and the series. pydicom
    reads ZZ's length in 2 bytes (4) and skips the OB; DCMTK reads it in 4 bytes (12),
    which swallows the OB's header, and reads the hidden elements as the instance's."""
    data = part10(ds)
    hidden = (
        ui_element(0x0008, 0x0016, str(ds.SOPClassUID))
        + ui_element(0x0008, 0x0018, str(ds.SOPInstanceUID))
        + element(0x0010, 0x0020, b"LO", str(ds.PatientID).encode())
        + ui_element(0x0020, 0x000D, study_uid)
        + ui_element(0x0020, 0x000E, str(ds.SeriesInstanceUID))
    )
    zz = struct.pack("<HH2sHI", 0x0008, 0x0001, b"ZZ", 4, 12)
    ob = struct.pack("<HH2sHI", 0x0008, 0x0003, b"OB", 0, len(hidden)) + hidden
    start = data_set_start(data)
    return data[:start] + zz + ob + data[start:]


def deflate_bomb(ds: Dataset, inflated_mb: int) -> bytes:
    """`ds` (without pixel data) as a deflated file whose data set holds, before the UIDs,
    a private OB element of `inflated_mb` MB of zeros: tiny on the wire, huge inflated."""
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = part10(ds)
    start = data_set_start(plain)
    meta = plain[:start].replace(
        ui_element(0x0002, 0x0010, ExplicitVRLittleEndian),
        ui_element(0x0002, 0x0010, DeflatedExplicitVRLittleEndian),
    )
    assert len(meta) == start + 2  # one UID 2 bytes longer: the meta group length too
    (group,) = struct.unpack_from("<I", meta, 140)
    meta = meta[:140] + struct.pack("<I", group + 2) + meta[144:]
    pack = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mb * 1024 * 1024
    body = [pack.compress(struct.pack("<HH2sHI", 0x0007, 0x0010, b"OB", 0, size))]
    body += [pack.compress(b"\0" * 1024 * 1024) for _ in range(inflated_mb)]
    body.append(pack.compress(plain[start:]) + pack.flush())
    return meta + b"".join(body)
