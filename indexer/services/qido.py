"""Study search (QIDO-RS /studies) that answers only with what the caller may read.

Orthanc knows nothing of institutions or grants, so the indexer answers study searches
itself, reading the study attributes from the central archive's DICOMweb:

- An open search (no attribute filter: a viewer's worklist) pages through the studies the
  caller may read, newest first: their own institution's and those granted to it, from
  the indexer's tables, then asks central for exactly that page by UID list.
- A filtered search (patient ID, date, accession no., ...) asks central with the same
  filters, keeps the studies the caller may read and pages through those. At most
  `max_matches` central matches are considered; a page that needed more comes back short,
  without a warning (a warning would tell how many studies match across institutions).

Neither path tells the caller anything about studies it may not read: counts, pages and
errors are computed after the filter.

Central is asked in raw characters only, and the filters it cannot apply (PatientName,
whose 汉字 Orthanc cannot match, and any value with non-ASCII or other characters Orthanc
1.10.1 would not decode) are matched here on its answers: see qido_match. Such a search
reads at most `max_matches` central answers, in batches of SCAN_BATCH: a search by 汉字
name alone reads every study central holds up to that bound (measured on the test stack:
about 1.2 kB of central's answer and 6 µs of matching per study; central's own QIDO time
dominates), while a pinyin name is first narrowed by central (`*MA^HUA*`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from cachetools import TTLCache
from psycopg_pool import AsyncConnectionPool

from ..errors import IndexerError, InvalidRecord
from . import qido_match

# Query keys that shape the answer rather than filter it.
CONTROL_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
STUDY_UID_TAG = "0020000D"
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
UIDS_PER_CALL = 50
SCAN_BATCH = 500

RECENT_SQL = """
SELECT uid FROM (
    SELECT study_instance_uid AS uid, last_seen AS seen FROM image_studies
    WHERE institution_code = %(institution)s
    UNION ALL
    SELECT g.study_instance_uid, g.created_at FROM grants g
    JOIN image_studies s ON s.study_instance_uid = g.study_instance_uid
      AND s.institution_code = g.owner_institution
    WHERE g.institution_code = %(institution)s AND g.revoked_at IS NULL
      AND (g.grantee_subject IS NULL OR g.grantee_subject = %(subject)s)
      AND (g.expires_at IS NULL OR g.expires_at > now())
) readable GROUP BY uid ORDER BY max(seen) DESC, uid LIMIT %(limit)s OFFSET %(offset)s
"""
AMONG_SQL = """
SELECT study_instance_uid FROM image_studies
WHERE study_instance_uid = ANY(%(uids)s) AND institution_code = %(institution)s
UNION
SELECT g.study_instance_uid FROM grants g
JOIN image_studies s ON s.study_instance_uid = g.study_instance_uid
  AND s.institution_code = g.owner_institution
WHERE g.study_instance_uid = ANY(%(uids)s) AND g.institution_code = %(institution)s
  AND (g.grantee_subject IS NULL OR g.grantee_subject = %(subject)s)
  AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > now())
"""


class CentralUnavailable(IndexerError):
    status = 502


@dataclass(frozen=True)
class Reader:
    """Whose readable studies: a staff member of an institution."""

    institution: str
    subject: str

    def params(self) -> dict[str, str]:
        return {"institution": self.institution, "subject": self.subject}


@dataclass(frozen=True)
class Page:
    studies: list[dict[str, Any]]


def paging(params: Sequence[tuple[str, str]]) -> tuple[int, int]:
    """limit and offset of a QIDO query, checked (422 names the parameter)."""
    values = {"limit": DEFAULT_LIMIT, "offset": 0}
    for key, raw in params:
        if key in values:
            if not re.fullmatch(r"[0-9]{1,9}", raw):
                raise InvalidRecord(key, "must be a non-negative integer below 10^9")
            values[key] = int(raw)
    if values["limit"] == 0 or values["limit"] > MAX_LIMIT:
        values["limit"] = MAX_LIMIT
    return values["limit"], values["offset"]


def is_open(params: Sequence[tuple[str, str]]) -> bool:
    return all(key in CONTROL_KEYS for key, _ in params)


def study_uid(study: dict[str, Any]) -> str | None:
    values = (study.get(STUDY_UID_TAG) or {}).get("Value") or []
    return str(values[0]) if values else None


STUDY_OF_ENTRIES = 100_000  # Orthanc resource ID -> study UID, per process


class CentralQido:
    """The central archive (loopback, central's own credentials): its QIDO-RS, and which
    study an Orthanc resource ID belongs to (a fixed fact, so it is remembered)."""

    def __init__(self, url: str, basic_auth: str, timeout_s: float) -> None:
        user, _, password = basic_auth.partition(":")
        self.client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            auth=(user, password) if user else None,
            timeout=httpx.Timeout(timeout_s),
            # Orthanc 1.10 drops idle keep-alive connections after about a second
            limits=httpx.Limits(keepalive_expiry=0.5),
        )
        # a fact that does not change (Orthanc's IDs are hashes of the UIDs): per process
        # is enough; bounded, and an hour's life lets a deleted study's entry go
        self._study_of: TTLCache[str, str] = TTLCache(maxsize=STUDY_OF_ENTRIES, ttl=3600)

    async def studies(self, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        # raw characters: Orthanc 1.10.1 does not percent-decode query values
        url = httpx.URL("/dicom-web/studies", query=qido_match.query_string(params))
        try:
            response = await self.client.get(url)
        except httpx.HTTPError as exc:
            raise CentralUnavailable(f"central archive: {type(exc).__name__}") from exc
        if response.status_code == 204:
            return []
        if response.status_code == 400:
            raise InvalidRecord("query", "the central archive refused this search")
        if response.status_code != 200:
            raise CentralUnavailable(f"central archive answered {response.status_code}")
        body = response.json()
        return body if isinstance(body, list) else []

    async def study_of_resource(self, level: str, orthanc_id: str) -> str | None:
        """The StudyInstanceUID of an Orthanc study or instance ID (None: no such one; "":
        central holds it, but its study names no StudyInstanceUID, which opens nothing)."""
        key = f"{level}/{orthanc_id}"
        if key in self._study_of:
            return self._study_of[key]
        path = f"/studies/{orthanc_id}" if level == "studies" else f"/instances/{orthanc_id}/study"
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise CentralUnavailable(f"central archive: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise CentralUnavailable(f"central archive answered {response.status_code}")
        uid = (response.json().get("MainDicomTags") or {}).get("StudyInstanceUID")
        if uid:
            self._study_of[key] = str(uid)
        return str(uid) if uid else ""

    async def close(self) -> None:
        await self.client.aclose()


async def readable_recent(
    pool: AsyncConnectionPool, reader: Reader, limit: int, offset: int
) -> list[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            RECENT_SQL, {**reader.params(), "limit": limit, "offset": offset}
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def readable_among(pool: AsyncConnectionPool, reader: Reader, uids: list[str]) -> set[str]:
    if not uids:
        return set()
    async with pool.connection() as conn:
        cursor = await conn.execute(AMONG_SQL, {**reader.params(), "uids": uids})
        return {str(row[0]) for row in await cursor.fetchall()}


async def search_for_reader(
    central: CentralQido,
    pool: AsyncConnectionPool,
    reader: Reader | None,
    params: Sequence[tuple[str, str]],
    max_matches: int,
) -> Page:
    """A page of the studies that match and that `reader` may read (None: all of them)."""
    limit, offset = paging(params)
    shaping = [(k, v) for k, v in params if k in ("includefield", "fuzzymatching")]
    if is_open(params) and reader is not None:
        uids = await readable_recent(pool, reader, limit, offset)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uids), UIDS_PER_CALL):
            chunk = uids[start : start + UIDS_PER_CALL]
            for study in await central.studies([("StudyInstanceUID", ",".join(chunk)), *shaping]):
                uid = study_uid(study)
                if uid:
                    found[uid] = study
        return Page([found[uid] for uid in uids if uid in found])
    asked = qido_match.split(
        [(k, v) for k, v in params if k not in ("limit", "offset")], CONTROL_KEYS
    )
    if reader is None and not asked.local:  # an administrator, and central can do it all
        return Page(await central.studies(qido_match.split(params, CONTROL_KEYS).central))
    wanted = offset + limit
    mine: list[dict[str, Any]] = []
    scanned = 0
    batch_size = min(max_matches, SCAN_BATCH)
    exhausted = False
    while not exhausted and scanned < max_matches and len(mine) < wanted:
        batch = await central.studies(
            [*asked.central, ("limit", str(batch_size)), ("offset", str(scanned))]
        )
        matching = [s for s in batch if all(f.matches(s) for f in asked.local)]
        if reader is None:
            mine.extend(matching)
        else:
            uids = [uid for uid in map(study_uid, matching) if uid]
            readable = await readable_among(pool, reader, uids)
            mine.extend(study for study in matching if study_uid(study) in readable)
        scanned += len(batch)
        exhausted = len(batch) < batch_size
    return Page(mine[offset:wanted])


async def search_one(
    central: CentralQido, study: str, params: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """A search restricted to one study (a share link): the caller's filters still apply."""
    asked = [v for k, v in params if k == "StudyInstanceUID"]
    if asked and asked != [study]:
        return []
    kept = [(k, v) for k, v in params if k not in ("StudyInstanceUID", "limit", "offset")]
    split = qido_match.split(kept, CONTROL_KEYS)
    answer = await central.studies([*split.central, ("StudyInstanceUID", study)])
    # the link's study alone, whatever else the query named (a 0020000D key, say)
    return [s for s in answer if study_uid(s) == study and all(f.matches(s) for f in split.local)]
