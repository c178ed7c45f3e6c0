"""Uploads from the hospitals' edges to the central archive pass here, so that a hospital
adds instances only to its own studies: the DICOM file's identifying elements are read from
the first bytes of the upload, checked, and the file streams on to central unchanged.

The gateway's authorisation check sees a request, not the file in its body; this is the
one place where the two meet. Two readers of one file must not see two studies in it
(pydicom keeps the last of two equal tags, DCMTK and so Orthanc the first), so the check
reads the raw element stream, not a parsed data set, and refuses what is ambiguous:
elements of the file meta or the top-level data set that are not in strictly ascending tag
order (a duplicate included) up to the first element past SeriesInstanceUID, a Study,
Series or SOP Instance UID that is not a valid UID, a file meta MediaStorageSOPInstanceUID
that is not the SOPInstanceUID. Then `confirm` checks that Orthanc indexed the instance
where the check saw it (its IDs are SHA-1s of these UIDs). Only the header is parsed;
the rest (pixel data) is passed along as it arrives.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from ..errors import IndexerError, InvalidRecord

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
HEADER_LIMIT = 4 * 1024 * 1024  # the UIDs come early: groups 0002-0020 of the data set


class CentralRefused(IndexerError):
    status = 502


class Ambiguous(InvalidRecord):
    """The file could be read as two different instances (400): refused, audited, with
    the StudyInstanceUID that Orthanc would have read, if one came before the ambiguity."""

    status = 400
    study: str | None = None


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


def _elements(
    fp: io.BytesIO, implicit: bool, little: bool, last: int, what: str, whole: bool
) -> Iterator[RawDataElement]:
    """Top-level raw elements up to tag `last`, in strictly ascending tag order, complete;
    `fp` is left at the end of the last one. Raises Ambiguous at a tag out of order, and
    _NeedMore if the prefix ends before the first element past `last` (only that proves
    the one before it whole), unless it is the `whole` file."""
    previous = -1
    past = []

    def stop(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        nonlocal previous
        if tag <= previous:
            raise Ambiguous("body", f"{what}: element {tag} out of order or repeated")
        previous = int(tag)
        if tag > last:
            past.append(tag)
            return True
        return False

    end = fp.tell()
    for element in data_element_generator(fp, implicit, little, stop_when=stop):
        if element.length != 0xFFFFFFFF:
            end = element.value_tell + element.length
        yield element
    if not (past or whole):
        raise _NeedMore
    fp.seek(end)


def _uid(element: RawDataElement | None, name: str) -> str:
    if element is None or element.value is None:
        raise Ambiguous("body", f"the file has no {name}")
    if element.VR not in (None, "UI"):
        raise Ambiguous("body", f"{name} is not encoded as a UID (VR UI)")
    try:
        value = bytes(element.value).rstrip(b"\0 ").decode("ascii")
    except (UnicodeDecodeError, TypeError):
        raise Ambiguous("body", f"{name} is not a valid UID") from None
    if not UID(value).is_valid:
        raise Ambiguous("body", f"{name} is not a valid UID (digits and dots, 64 at most)")
    return value


def _text(element: RawDataElement | None) -> str | None:
    if element is None or not element.value:
        return ""
    try:
        return bytes(element.value).rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        return None


def _read(prefix: bytes, whole: bool) -> Identity:
    fp = io.BytesIO(prefix)
    read_preamble(fp, False)  # InvalidDicomError unless Part 10 ("DICM" at 128)
    meta = {
        e.tag: e
        for e in _elements(fp, False, True, 0x0002FFFF, "file meta", whole)
        if e.tag >> 16 == 0x0002
    }
    syntax = _uid(meta.get(TRANSFER_SYNTAX), "TransferSyntaxUID")
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if syntax == DeflatedExplicitVRLittleEndian:
        fp = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read()))
    found: dict[int, RawDataElement] = {}
    try:
        for element in _elements(fp, implicit, little, SERIES_INSTANCE, "data set", whole):
            if element.tag in UID_NAMES or element.tag == PATIENT_ID:
                found[element.tag] = element
    except Ambiguous as exc:
        exc.study = _text(found.get(STUDY_INSTANCE)) or None  # the first one: DCMTK's
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


def _identity(prefix: bytes, whole: bool) -> Identity | None:
    """The instance's identity once `prefix` holds its elements complete. None if more
    bytes are needed. Raises InvalidRecord when it is not a DICOM file we take."""
    if prefix.startswith(b"PK\x03\x04"):
        # Orthanc unpacks a body that starts like a ZIP archive, and a DICOM preamble
        # can be made to: such a file could name one study and carry another's.
        raise InvalidRecord("body", "a single DICOM file is expected, not an archive")
    try:
        return _read(prefix, whole)
    except InvalidDicomError:
        raise InvalidRecord("body", "not a DICOM file (Part 10)") from None
    except zlib.error:
        raise InvalidRecord("body", "the deflated data set cannot be read") from None
    except (_NeedMore, EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError):
        if whole:  # the file ends before the elements the check needs
            raise InvalidRecord(
                "body", "a DICOM file with Study, Series and SOP Instance UIDs is expected"
            ) from None
        return None  # cut mid-element: read on


async def split_header(stream: AsyncIterator[bytes]) -> tuple[Identity, bytes]:
    """(the instance's identity, the bytes read so far) from an upload stream."""
    prefix = b""
    next_try = 2048  # parse again only when what was read has doubled: tiny chunks cost
    async for chunk in stream:  # a few parses, not one each
        prefix += chunk
        if len(prefix) >= next_try:
            found = _identity(prefix, whole=False)
            if found:
                return found, prefix
            next_try = 2 * len(prefix)
        if len(prefix) > HEADER_LIMIT:
            raise InvalidRecord("body", "no SeriesInstanceUID in the first 4 MB")
    found = _identity(prefix, whole=True)
    assert found is not None
    return found, prefix


async def _rest(prefix: bytes, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield prefix
    async for chunk in stream:
        yield chunk


async def store(
    client: httpx.AsyncClient, prefix: bytes, stream: AsyncIterator[bytes]
) -> httpx.Response:
    """POST the whole file to central's /instances; central's answer is returned as is."""
    try:
        return await client.post(
            "/instances",
            content=_rest(prefix, stream),
            headers={"Content-Type": "application/dicom"},
        )
    except httpx.HTTPError as exc:
        raise CentralRefused(f"central archive: {type(exc).__name__}") from exc


async def _get(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    try:
        answer = await client.get(path)
    except httpx.HTTPError as exc:
        raise CentralRefused(f"central archive: {type(exc).__name__}") from exc
    if answer.status_code != 200:
        raise CentralRefused(f"central archive answered {answer.status_code} for its own ID")
    return dict(answer.json())


async def indexed_study(
    client: httpx.AsyncClient, checked: Identity, stored: dict[str, Any]
) -> str | None:
    """None if central indexed the instance where the check saw it (central's answer to
    the POST, `stored`, names Orthanc's IDs); else the StudyInstanceUID of the study it
    really joined. The IDs are compared first (no call); if they differ, central's own
    record of the instance, its series and its study is compared, UID by UID."""
    ids = checked.orthanc_ids()
    if ids is not None and ids == (stored.get("ID"), stored.get("ParentStudy")):
        return None
    instance = await _get(client, f"/instances/{stored['ID']}")
    series = await _get(client, f"/series/{instance['ParentSeries']}")
    study = await _get(client, f"/studies/{series['ParentStudy']}")
    indexed = (
        str(study["MainDicomTags"].get("StudyInstanceUID", "")),
        str(series["MainDicomTags"].get("SeriesInstanceUID", "")),
        str(instance["MainDicomTags"].get("SOPInstanceUID", "")),
    )
    if indexed == (checked.study, checked.series, checked.sop):
        return None
    return indexed[0]


async def remove(client: httpx.AsyncClient, instance_id: str) -> None:
    """Take back an instance this upload stored (never one that was there before)."""
    try:
        answer = await client.delete(f"/instances/{instance_id}")
    except httpx.HTTPError as exc:
        raise CentralRefused(f"central archive: {type(exc).__name__}") from exc
    if answer.status_code != 200:
        raise CentralRefused(f"central archive answered {answer.status_code} to a removal")
