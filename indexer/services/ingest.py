"""Uploads from the hospitals' edges to the central archive pass here, so that a hospital
adds instances only to its own studies: the DICOM file's StudyInstanceUID is read from
the first bytes of the upload, checked, and the file streams on to central unchanged.

The gateway's authorisation check sees a request, not the file in its body; this is the
one place where the two meet. Only the header is parsed (pydicom's partial read, up to the
StudyInstanceUID element); the rest is passed along as it arrives.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator

import httpx
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from ..errors import IndexerError, InvalidRecord

STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)
HEADER_LIMIT = 4 * 1024 * 1024  # the UID comes early: groups 0002-0020 of the data set


class CentralRefused(IndexerError):
    status = 502


def _study_uid(prefix: bytes, whole: bool) -> str | None:
    """The StudyInstanceUID once `prefix` holds that element complete: the parse reached
    the element after it, or `prefix` is the whole file. None if more bytes are needed.
    Raises InvalidRecord when it is not a DICOM file we take, or has no UID."""
    if prefix.startswith(b"PK\x03\x04"):
        # Orthanc unpacks a body that starts like a ZIP archive, and a DICOM preamble
        # can be made to: such a file could name one study and carry another's.
        raise InvalidRecord("body", "a single DICOM file is expected, not an archive")
    seen_next = []

    def past_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        if tag > STUDY_INSTANCE_UID:
            seen_next.append(tag)
            return True
        return False

    try:
        dataset = read_partial(io.BytesIO(prefix), stop_when=past_uid)
        uid = dataset.get("StudyInstanceUID")
    except InvalidDicomError:
        raise InvalidRecord("body", "not a DICOM file (Part 10)") from None
    except zlib.error:
        raise InvalidRecord("body", "the deflated data set cannot be read") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError):
        return None  # cut mid-element: read on
    if not (seen_next or whole):
        return None  # the value may be cut short: only an element after it proves it whole
    return str(uid) if uid else None


async def split_header(stream: AsyncIterator[bytes]) -> tuple[str, bytes]:
    """(StudyInstanceUID, the bytes read so far) from an upload stream."""
    prefix = b""
    next_try = 2048  # parse again only when what was read has doubled: tiny chunks cost
    async for chunk in stream:  # a few parses, not one each
        prefix += chunk
        if len(prefix) >= next_try:
            uid = _study_uid(prefix, whole=False)
            if uid:
                return uid, prefix
            next_try = 2 * len(prefix)
        if len(prefix) > HEADER_LIMIT:
            raise InvalidRecord("body", "no StudyInstanceUID in the first 4 MB")
    uid = _study_uid(prefix, whole=True)
    if not uid:
        raise InvalidRecord("body", "a DICOM file with a StudyInstanceUID is expected")
    return uid, prefix


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
