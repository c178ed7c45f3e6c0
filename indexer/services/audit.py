"""Writing, sealing, verifying and purging the audit trail (see models/audit.py).

Rows are inserted as requests finish (one INSERT on the async pool, no lock); a sealer
chains them in id order once they are 2 s old, so concurrent writers never wait on each
other. Verification walks the sealed rows from the retention anchor and names each row
whose content no longer matches its hash, and each place where rows went missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import CursorResult, String, text
from sqlalchemy.orm import Session

from ..models import AuditEvent

log = logging.getLogger(__name__)
GENESIS = bytes(32)
COLUMNS = (
    "id", "at", "actor", "username", "roles", "institution", "action", "resource", "purpose",
    "source", "outcome",
)  # fmt: skip
INSERT_SQL = """
INSERT INTO audit_events (actor, username, roles, institution, action, resource, purpose,
                          source, outcome)
VALUES (%(actor)s, %(username)s, %(roles)s, %(institution)s, %(action)s, %(resource)s,
        %(purpose)s, %(source)s, %(outcome)s)
"""


# A value the database refuses (too long, or with a NUL) would fail the writer's whole batch,
# at every flush: the resource of a refused request with an over-long path, say. Made to fit.
WIDTHS = {c.name: c.type.length for c in AuditEvent.__table__.columns if isinstance(c.type, String)}


def canonical(row: dict[str, Any]) -> bytes:
    values = [row[c].isoformat() if isinstance(row[c], dt.datetime) else row[c] for c in COLUMNS]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


def chain(prev: bytes, row: dict[str, Any]) -> bytes:
    return hashlib.sha256(prev + canonical(row)).digest()


def event(
    who: Any,
    action: str,
    resource: str | None,
    source: str | None,
    outcome: int,
    purpose: str | None = None,
) -> dict[str, Any]:
    """One audit record; `who` is the caller (a Principal) or None when unauthenticated."""
    record: dict[str, Any] = {
        "actor": who.subject if who else "anonymous",
        "username": who.username if who else "anonymous",
        "roles": ",".join(sorted(who.roles)) if who else "",
        "institution": who.institution if who else None,
        "action": action,
        "resource": resource,
        "purpose": purpose,
        "source": source,
        "outcome": outcome,
    }
    for column, width in WIDTHS.items():
        value = record[column]
        if isinstance(value, str):
            record[column] = value.replace("\x00", "")[:width]
    return record


class AuditWriter:
    """Async writer used by the API. Records are queued and written in batches every
    `flush_s` (one transaction for many requests): a crash can lose at most that window,
    like PostgreSQL's own asynchronous commit. Identical reads within a minute (an image
    viewer fetching frame after frame) are recorded once."""

    def __init__(
        self, pool: AsyncConnectionPool, dedupe_s: float = 60.0, flush_s: float = 0.1
    ) -> None:
        self.pool = pool
        self.dedupe_s = dedupe_s
        self.flush_s = flush_s
        self._recent: dict[tuple[str, str, str, int], float] = {}
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, event: dict[str, Any], dedupe: bool = False) -> None:
        if dedupe:
            key = (event["actor"], event["action"], event.get("resource") or "", event["outcome"])
            now = time.monotonic()
            if now - self._recent.get(key, -1e9) < self.dedupe_s:
                return
            if len(self._recent) > 50_000:
                self._recent.clear()
            self._recent[key] = now
        self._pending.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.flush_s)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._insert(batch)
        except psycopg.OperationalError:  # the database is away: kept for the next flush
            log.exception("%d audit records could not be written yet", len(batch))
            self._pending = batch + self._pending
        except psycopg.Error:
            # One record the database refuses must not stop the trail (it would fail every
            # later batch too): one by one, a refused one again without its free-text
            # fields, and only then dropped, loudly. Messages never carry the events' data.
            log.exception("%d audit records refused as a batch: one by one", len(batch))
            for record in batch:
                await self._insert_alone(record)

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(INSERT_SQL, batch)

    async def _insert_alone(self, record: dict[str, Any]) -> None:
        for attempt in (record, record | {"resource": "(refused)", "purpose": None}):
            try:
                await self._insert([attempt])
                return
            except psycopg.OperationalError:
                self._pending.append(record)
                return
            except psycopg.Error:
                continue
        log.error("an audit record of action %r was refused and dropped", record.get("action"))


@dataclass
class Problem:
    id: int
    reason: str


def _rows(session: Session, after_id: int, limit: int) -> list[dict[str, Any]]:
    result = session.execute(
        text(
            f"SELECT {', '.join(COLUMNS)}, prev_hash, hash FROM audit_events "  # noqa: S608 - fixed names
            "WHERE id > :after ORDER BY id LIMIT :limit"
        ),
        {"after": after_id, "limit": limit},
    )
    return [dict(r._mapping) for r in result]


def _anchor(session: Session) -> tuple[int, bytes]:
    row = session.execute(
        text("SELECT last_purged_id, last_purged_hash FROM audit_anchor WHERE id = 1")
    ).first()
    return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)


def seal(session: Session, min_age_s: float = 2.0, batch: int = 5000) -> int:
    """Chain unsealed rows older than min_age_s, in id order; returns how many."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(7401)")).scalar():
        return 0  # another worker is sealing
    last = session.execute(
        text("SELECT id, hash FROM audit_events WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1")
    ).first()
    after, prev = (int(last[0]), bytes(last[1])) if last else _anchor(session)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=min_age_s)
    updates = []
    for row in _rows(session, after, batch):
        if row["hash"] is not None or row["at"] > cutoff:
            break
        digest = chain(prev, row)
        updates.append({"p": prev, "h": digest, "id": row["id"]})
        prev = digest
    if updates:
        session.execute(
            text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE id = :id"), updates
        )
    return len(updates)


def verify(session: Session) -> tuple[int, list[Problem]]:
    """(rows checked, problems): each edited row, each gap where rows were removed."""
    after, prev = _anchor(session)
    checked, problems = 0, []
    previous_id = after
    while True:
        rows = _rows(session, after, 10_000)
        if not rows:
            break
        for row in rows:
            after = row["id"]
            if row["hash"] is None:
                continue  # not sealed yet (the newest few seconds)
            checked += 1
            if bytes(row["prev_hash"]) != prev:
                problems.append(
                    Problem(
                        row["id"],
                        f"the row before it is missing or altered (after id {previous_id})",
                    )
                )
            if chain(bytes(row["prev_hash"]), row) != bytes(row["hash"]):
                problems.append(Problem(row["id"], "its content does not match its hash (edited)"))
            prev = bytes(row["hash"])
            previous_id = row["id"]
    return checked, problems


def purge(session: Session, retention_days: int) -> int:
    """Delete sealed rows older than the retention period; the anchor keeps the chain."""
    if retention_days < 180:
        raise ValueError("retention must be at least 180 days")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)
    last = session.execute(
        text(
            "SELECT id, hash FROM audit_events WHERE hash IS NOT NULL AND at < :cutoff "
            "ORDER BY id DESC LIMIT 1"
        ),
        {"cutoff": cutoff},
    ).first()
    if last is None:
        return 0
    session.execute(text("SET LOCAL imgcloud.audit_purge = 'on'"))
    result = session.execute(text("DELETE FROM audit_events WHERE id <= :id"), {"id": last[0]})
    deleted = cast(CursorResult[Any], result).rowcount
    session.execute(
        text(
            "INSERT INTO audit_anchor (id, last_purged_id, last_purged_hash) VALUES (1, :id, :h) "
            "ON CONFLICT (id) DO UPDATE SET last_purged_id = :id, last_purged_hash = :h, "
            "purged_at = now()"
        ),
        {"id": last[0], "h": last[1]},
    )
    return int(deleted)


class Sealer:
    """Seals every `every_s` (run as its own process: `python -m indexer audit seal
    --every 1`, started by the indexer)."""

    def __init__(self, sessions: Callable[[], Session], every_s: float = 1.0) -> None:
        self.sessions = sessions
        self.every_s = every_s
        self._stop = threading.Event()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                with self.sessions() as session, session.begin():
                    seal(session)
            except Exception:
                log.exception("audit sealer error")
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
