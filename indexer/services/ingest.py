"""Uploads from the hospitals' edges to the central archive pass here, so that a hospital
adds instances only to its own studies: the DICOM file's StudyInstanceUID is read from
the first bytes of the upload, checked, and the file streams on to central unchanged.

The gateway's authorisation check sees a request, not the file in its body; this is the
one place where the two meet. Only the header is parsed (pydicom's partial read, up to the
StudyInstanceUID element); the rest is passed along as it arrives.
"""

from __future__ import annotations

import io
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


def _study_uid(prefix: bytes) -> str | None:
    """The StudyInstanceUID if `prefix` holds the file up to that element; None if more
    bytes are needed. Raises InvalidRecord when it is not a DICOM file or has no UID."""

    def past_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        return tag > STUDY_INSTANCE_UID

    try:
        dataset = read_partial(io.BytesIO(prefix), stop_when=past_uid)
        uid = dataset.get("StudyInstanceUID")
    except InvalidDicomError:
        raise InvalidRecord("body", "not a DICOM file (Part 10)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError):
        return None  # cut mid-element: read on
    if uid:
        return str(uid)
    return None


async def split_header(stream: AsyncIterator[bytes]) -> tuple[str, bytes]:
    """(StudyInstanceUID, the bytes read so far) from an upload stream."""
    prefix = b""
    next_try = 2048  # parse again only when what was read has doubled: tiny chunks cost
    async for chunk in stream:  # a few parses, not one each
        prefix += chunk
        if len(prefix) >= next_try:
            uid = _study_uid(prefix)
            if uid:
                return uid, prefix
            next_try = 2 * len(prefix)
        if len(prefix) > HEADER_LIMIT:
            break
    uid = _study_uid(prefix)
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
