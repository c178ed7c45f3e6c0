"""The identifying elements of a DICOM upload, read as DCMTK (and so Orthanc) reads them.

Two readers of one file must not see two studies in it (pydicom keeps the last of two
equal tags, DCMTK and so Orthanc the first; an unknown VR has a 2-byte length for one and
4 for the other), so this reads the raw element stream of the file meta and the top-level
data set itself, not a parsed data set, and refuses what is ambiguous: elements not in
strictly ascending tag order (a duplicate included) up to the first element past
SeriesInstanceUID, a VR outside the standard, a Study, Series or SOP Instance UID that is
not a valid UID, a file meta MediaStorageSOPInstanceUID that is not the SOPInstanceUID,
lengths that do not add up. Sequences are stepped over item by item; a deflated data set
is inflated once, never past HEADER_LIMIT.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from ..errors import InvalidRecord

TRANSFER_SYNTAX = 0x00020010
MEDIA_SOP_INSTANCE = 0x00020003
SOP_INSTANCE = 0x00080018
PATIENT_ID = 0x00100020
STUDY_INSTANCE = 0x0020000D
SERIES_INSTANCE = 0x0020000E
UID_NAMES = {
    STUDY_INSTANCE: "StudyInstanceUID",
    SERIES_INSTANCE: "SeriesInstanceUID",
    SOP_INSTANCE: "SOPInstanceUID",
}
META_LENGTH = 0x00020000
HEADER_LIMIT = 4 * 1024 * 1024  # the UIDs come early: groups 0002-0020 of the data set


class Ambiguous(InvalidRecord):
    """The file could be read as two different instances (400): refused, audited, with
    the StudyInstanceUID that Orthanc would have read, if one came before the ambiguity."""

    status = 400
    study: str | None = None
    found: dict[int, _Element] | None = None


class HeaderTooLarge(InvalidRecord):
    """The identifying elements are not within the first HEADER_LIMIT bytes (400)."""

    status = 400


class _NeedMore(Exception):
    """The prefix ends before the elements the check needs."""


@dataclass(frozen=True)
class Identity:
    """What the check read: the instance's UIDs (and the patient ID Orthanc hashes)."""

    study: str
    series: str
    sop: str
    patient_id: str | None  # None: not plain ASCII, Orthanc's IDs are then asked for

    def orthanc_ids(self) -> tuple[str, str] | None:
        """(instance ID, study ID) as Orthanc derives them: SHA-1 of "PatientID|Study UID"
        (and "|Series UID|SOP UID" for the instance), in 5 dash-separated groups of 8."""
        if self.patient_id is None:
            return None
        study = f"{self.patient_id}|{self.study}"
        return _orthanc_id(f"{study}|{self.series}|{self.sop}"), _orthanc_id(study)


def _orthanc_id(text: str) -> str:
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


# Every VR of the standard; those with a 4-byte length after 2 reserved bytes are the ones
# DCMTK 3.6.7 and pydicom agree on. Any other VR is refused: the two readers read an
# unknown VR's length differently (DCMTK 4 bytes, pydicom 2), and pydicom takes VR bytes
# that are not letters for a switch to Implicit VR.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 16  # sequences within items within sequences


@dataclass(frozen=True)
class _Syntax:
    implicit: bool
    little: bool


IMPLICIT_LE = _Syntax(True, True)


class _Walk:
    """A cursor over the raw bytes of one data set (or item) in one transfer syntax."""

    def __init__(self, buf: bytes | bytearray, at: int, syntax: _Syntax) -> None:
        self.buf, self.at, self.syntax = buf, at, syntax
        self.u16 = struct.Struct("<H" if syntax.little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if syntax.little else ">I").unpack_from

    def need(self, n: int) -> None:
        if self.at + n > len(self.buf):
            raise _NeedMore

    def tag(self) -> int:
        self.need(4)
        group, element = self.u16(self.buf, self.at)[0], self.u16(self.buf, self.at + 2)[0]
        self.at += 4
        return group << 16 | element

    def header(self, tag: int, where: str) -> tuple[bytes | None, int]:
        """(VR, value length) of the element whose tag was just read."""
        if tag >> 16 == 0xFFFE or self.syntax.implicit:
            self.need(4)
            length = self.u32(self.buf, self.at)[0]
            self.at += 4
            return None, length
        self.need(4)
        vr = bytes(self.buf[self.at : self.at + 2])
        if vr in SHORT_VRS:
            length = self.u16(self.buf, self.at + 2)[0]
            self.at += 4
            return vr, length
        if vr not in LONG_VRS:
            shown = vr.decode("ascii", "backslashreplace")
            raise Ambiguous("body", f"{where}: element {_name(tag)} has VR {shown!r}, not standard")
        self.need(8)
        length = self.u32(self.buf, self.at + 4)[0]
        self.at += 8
        return vr, length

    def skip_value(self, tag: int, vr: bytes | None, length: int, where: str, depth: int) -> None:
        """Step over an element's value as DCMTK does: a sequence item by item."""
        sequence = vr == b"SQ" or (vr is None and _dictionary_sq(tag))
        if length == UNDEFINED:
            if vr == b"UN":  # an undefined-length UN is a sequence in Implicit VR LE
                self._items(tag, None, where, depth, IMPLICIT_LE)
            elif sequence or vr is None:
                self._items(tag, None, where, depth, self.syntax)
            else:
                raise Ambiguous("body", f"{where}: element {_name(tag)} has an undefined length")
            return
        if sequence:
            self._items(tag, self.at + length, where, depth, self.syntax)
        else:
            self.need(length)
            self.at += length

    def _items(self, tag: int, end: int | None, where: str, depth: int, syntax: _Syntax) -> None:
        if depth >= MAX_DEPTH:
            raise Ambiguous("body", f"{where}: sequences nested more than {MAX_DEPTH} deep")
        inner = self if syntax == self.syntax else _Walk(self.buf, self.at, syntax)
        bad = f"{where}: the items of sequence {_name(tag)} do not match their lengths"
        while end is None or inner.at < end:
            item = inner.tag()
            _vr, length = inner.header(item, where)
            if item == SEQUENCE_END and end is None:
                break
            if item != ITEM:
                raise Ambiguous("body", bad)
            item_end = None if length == UNDEFINED else inner.at + length
            while item_end is None or inner.at < item_end:
                element = inner.tag()
                vr, size = inner.header(element, where)
                if element == ITEM_END and item_end is None:
                    break
                if element >> 16 == 0xFFFE:
                    raise Ambiguous("body", bad)
                inner.skip_value(element, vr, size, where, depth + 1)
            if item_end is not None and inner.at != item_end:
                raise Ambiguous("body", bad)
        if end is not None and inner.at != end:
            raise Ambiguous("body", bad)
        self.at = inner.at


def _dictionary_sq(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True)
class _Element:
    vr: str | None
    value: bytes
    end: int  # offset just past it


def _elements(
    walk: _Walk, last: int, what: str, whole: bool, keep: frozenset[int]
) -> tuple[dict[int, _Element], int | None]:
    """The elements in `keep` of the top level, up to tag `last`, in strictly ascending
    tag order, complete; (found, the first tag past `last`, None at the end of a `whole`
    file). Raises Ambiguous at a tag out of order or a VR DCMTK would read otherwise, and
    _NeedMore if the prefix ends before the first element past `last`."""
    previous = -1
    found: dict[int, _Element] = {}
    try:
        while True:
            if whole and walk.at == len(walk.buf):
                return found, None
            start = walk.at
            tag = walk.tag()
            if tag <= previous:
                exc = Ambiguous("body", f"{what}: element {_name(tag)} out of order or repeated")
                exc.found = found
                raise exc
            if tag > last:
                walk.at = start
                return found, tag
            if tag >> 16 == 0xFFFE:
                raise Ambiguous("body", f"{what}: an item or delimiter at the top level")
            previous = tag
            vr, length = walk.header(tag, what)
            if tag in keep:
                if length == UNDEFINED:
                    raise Ambiguous("body", f"{what}: element {_name(tag)} has an undefined length")
                walk.need(length)
                found[tag] = _Element(
                    None if vr is None else vr.decode(),
                    bytes(walk.buf[walk.at : walk.at + length]),
                    walk.at + length,
                )
                walk.at += length
            else:
                walk.skip_value(tag, vr, length, what, 0)
    except Ambiguous as exc:
        exc.found = found
        raise


_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")


def _uid(element: _Element | None, name: str) -> str:
    if element is None or not element.value:
        raise Ambiguous("body", f"the file has no {name}")
    if element.vr not in (None, "UI"):
        raise Ambiguous("body", f"{name} is not encoded as a UID (VR UI)")
    try:
        value = element.value.rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        raise Ambiguous("body", f"{name} is not a valid UID") from None
    # validated here, quietly (pydicom's own warning would write the value into the log);
    # pydicom takes a leading space, DICOM does not
    if not (_UID_TEXT.fullmatch(value) and UID(value, validation_mode=config.IGNORE).is_valid):
        raise Ambiguous("body", f"{name} is not a valid UID (digits and dots, 64 at most)")
    return value


def _text(element: _Element | None) -> str | None:
    if element is None or not element.value:
        return ""
    try:
        return element.value.rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        return None


EXPLICIT_LE = _Syntax(False, True)
META_KEEP = frozenset({META_LENGTH, MEDIA_SOP_INSTANCE, TRANSFER_SYNTAX})
DATA_KEEP = frozenset({*UID_NAMES, PATIENT_ID})


class _Header:
    """The check's reading of one upload, as its bytes arrive. A deflated data set is
    inflated once, incrementally, and never past HEADER_LIMIT (a deflate bomb stops
    there)."""

    def __init__(self) -> None:
        self.inflater: Any = None
        self.inflated = bytearray()
        self.fed = 0  # bytes of the upload given to the inflater

    def identity(self, prefix: bytes | bytearray, whole: bool) -> Identity | None:
        """The instance's identity once `prefix` holds its elements complete. None if
        more bytes are needed. Raises InvalidRecord when it is not a DICOM file we take."""
        if prefix[:4] == b"PK\x03\x04":
            # Orthanc unpacks a body that starts like a ZIP archive, and a DICOM preamble
            # can be made to: such a file could name one study and carry another's.
            raise InvalidRecord("body", "a single DICOM file is expected, not an archive")
        if len(prefix) >= 132 and prefix[128:132] != b"DICM":
            raise InvalidRecord("body", "not a DICOM file (Part 10)")
        try:
            return self._read(prefix, whole)
        except zlib.error:
            raise InvalidRecord("body", "the deflated data set cannot be read") from None
        except _NeedMore:
            if self.inflater is not None and len(self.inflated) >= HEADER_LIMIT:
                raise HeaderTooLarge(
                    "body", "no SeriesInstanceUID in the first 4 MB of the inflated data set"
                ) from None
            if whole:  # the file ends before the elements the check needs
                raise InvalidRecord(
                    "body", "a DICOM file with Study, Series and SOP Instance UIDs is expected"
                ) from None
            return None  # cut mid-element: read on

    def _read(self, prefix: bytes | bytearray, whole: bool) -> Identity:
        if len(prefix) < 132:
            raise _NeedMore
        walk = _Walk(prefix, 132, EXPLICIT_LE)
        meta, _next = _elements(walk, 0x0002FFFF, "file meta", whole, META_KEEP)
        group = meta.get(META_LENGTH)
        if group is not None:  # DCMTK ends the meta where its group length says
            length = struct.unpack("<I", group.value)[0] if len(group.value) == 4 else -1
            if length != walk.at - group.end:
                raise Ambiguous("body", "file meta: the group length (0002,0000) is not its length")
        syntax = _uid(meta.get(TRANSFER_SYNTAX), "TransferSyntaxUID")
        if syntax == DeflatedExplicitVRLittleEndian:
            walk = _Walk(self._inflate(prefix, walk.at), 0, EXPLICIT_LE)
            whole = whole and not self.inflater.unconsumed_tail
        else:
            implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
            walk = _Walk(prefix, walk.at, _Syntax(implicit, little))
        try:
            found, _next = _elements(walk, SERIES_INSTANCE, "data set", whole, DATA_KEEP)
        except Ambiguous as exc:  # the first StudyInstanceUID, DCMTK's: for the audit row
            exc.study = _text((exc.found or {}).get(STUDY_INSTANCE)) or None
            raise
        uids = {tag: _uid(found.get(tag), name) for tag, name in UID_NAMES.items()}
        if _uid(meta.get(MEDIA_SOP_INSTANCE), "MediaStorageSOPInstanceUID") != uids[SOP_INSTANCE]:
            raise Ambiguous("body", "MediaStorageSOPInstanceUID is not the SOPInstanceUID")
        return Identity(
            study=uids[STUDY_INSTANCE],
            series=uids[SERIES_INSTANCE],
            sop=uids[SOP_INSTANCE],
            patient_id=_text(found.get(PATIENT_ID)),
        )

    def _inflate(self, prefix: bytes | bytearray, start: int) -> bytearray:
        """The data set inflated so far: the bytes that arrived since the last call are fed
        to one inflater, whose output stops at HEADER_LIMIT."""
        if self.inflater is None:
            self.inflater, self.fed = zlib.decompressobj(-zlib.MAX_WBITS), start
        room = HEADER_LIMIT - len(self.inflated)
        if room > 0:
            data = self.inflater.unconsumed_tail + bytes(prefix[self.fed :])
            self.fed = len(prefix)
            self.inflated += self.inflater.decompress(data, room)
        return self.inflated


async def split_header(stream: AsyncIterator[bytes]) -> tuple[Identity, bytes]:
    """(the instance's identity, the bytes read so far) from an upload stream."""
    prefix = bytearray()
    header = _Header()
    next_try = 2048  # parse again only when what was read has doubled: tiny chunks cost
    async for chunk in stream:  # a few parses, not one each
        prefix += chunk
        if len(prefix) >= next_try:
            found = header.identity(prefix, whole=False)
            if found:
                return found, bytes(prefix)
            next_try = 2 * len(prefix)
        if len(prefix) > HEADER_LIMIT:
            raise HeaderTooLarge("body", "no SeriesInstanceUID in the first 4 MB")
    found = header.identity(prefix, whole=True)
    assert found is not None
    return found, bytes(prefix)
