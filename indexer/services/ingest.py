"""Uploads from the hospitals' edges to the central archive pass here, so that a hospital
adds instances only to its own studies: the DICOM file's identifying elements are read from
the first bytes of the upload (`dicom_header.split_header`, which refuses a file two
readers could read as two instances), checked by the route, and the file streams on to
central unchanged. Then `indexed_study` checks that Orthanc indexed the instance where the
check saw it (its IDs are SHA-1s of these UIDs), and `remove` takes back one it did not.

The gateway's authorisation check sees a request, not the file in its body; this is the
one place where the two meet. Only the header is parsed; the rest (pixel data) is passed
along as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..errors import IndexerError
from .dicom_header import Ambiguous, HeaderTooLarge, Identity, split_header

__all__ = ["Ambiguous", "CentralRefused", "HeaderTooLarge", "Identity", "split_header", "store"]

log = logging.getLogger(__name__)


class CentralRefused(IndexerError):
    status = 502


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


CENTRAL_TIMEOUT_S = 10.0  # each after-store call; the store itself has the client's
REMOVE_TRIES = 3


async def _get(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    try:
        answer = await client.get(path, timeout=CENTRAL_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CentralRefused(f"central archive: {type(exc).__name__}") from exc
    if answer.status_code != 200:
        raise CentralRefused(f"central archive answered {answer.status_code} for its own ID")
    try:
        return dict(answer.json())
    except ValueError:
        raise CentralRefused("central archive: an answer that is not JSON") from None


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
    """Take back an instance this upload stored (never one that was there before): up to
    REMOVE_TRIES attempts, each with its timeout. Raises CentralRefused if none succeeded."""
    failure = "no attempt"
    for _attempt in range(REMOVE_TRIES):
        try:
            answer = await client.delete(f"/instances/{instance_id}", timeout=CENTRAL_TIMEOUT_S)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
            continue
        if answer.status_code in (200, 404):  # 404: gone already
            return
        failure = f"status {answer.status_code}"
    raise CentralRefused(f"central archive: the removal failed ({failure})")
