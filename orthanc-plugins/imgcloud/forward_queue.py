"""The edge's durable forwarding queue (SQLite): survives restarts, crashes and outages.

One row per study: queued → sending → delivered (or partial while the study is still
arriving: what the edge holds is confirmed, more is expected), or failed (with its reason,
retried with capped exponential backoff). A study is queued when its first instance arrives, so it
streams to central while the modality is still sending and survives a crash before it is
stable; more instances re-queue it, and one that arrives while the study is being sent
marks it to go again (dirty). A study left 'sending' by a crash is due again at the next
start. Central stores each SOP instance once, so nothing is duplicated.

Per instance, the SHA-256 and whether central confirmed it are kept, so a study sent in
many rounds is read and hashed once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sqlite_store import SqliteStore, add_column, statements

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id      TEXT PRIMARY KEY,       -- Orthanc study ID on this edge
    state         TEXT NOT NULL,          -- queued | sending | partial | delivered | failed
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    REAL NOT NULL DEFAULT 0,
    last_error    TEXT,
    queued_at     REAL NOT NULL,
    updated_at    REAL NOT NULL,
    delivered_at  REAL,
    instances     INTEGER NOT NULL DEFAULT 0,
    bytes_sent    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_due ON studies (state, not_before);
CREATE TABLE IF NOT EXISTS instances (
    instance_id   TEXT PRIMARY KEY,        -- Orthanc instance ID on this edge
    study_id      TEXT NOT NULL,
    sop_uid       TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    confirmed     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_id);
"""
ACTIVE = ("queued", "sending", "failed")


@dataclass(frozen=True)
class StudyStatus:
    study_id: str
    state: str
    attempts: int
    last_error: str | None
    queued_at: float
    updated_at: float
    delivered_at: float | None
    instances: int
    bytes_sent: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _v1(db: sqlite3.Connection) -> None:
    """The queue as it stood before the versioning; `dirty` came with streaming."""
    for statement in statements(SCHEMA):
        db.execute(statement)
    add_column(db, "studies", "dirty", "INTEGER NOT NULL DEFAULT 0")


class ForwardQueue(SqliteStore):
    """Thread-safe; every change is committed before the call returns."""

    migrations = (_v1,)
    synchronous = "FULL"  # a crash must not lose a queued study

    def __init__(
        self, path: Path, *, retry_max_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(path)
        self.retry_max_s = retry_max_s
        self.clock = clock

    def enqueue(self, study_id: str) -> None:
        """Queue a study, or mark it to go again. A study already queued and due, or
        being sent and marked already, is left as it is: each arriving instance calls
        this, and a write that changes nothing would still cost a synced commit."""
        now = self.clock()
        self.run(
            """INSERT INTO studies (study_id, state, queued_at, updated_at)
               VALUES (?, 'queued', ?, ?)
               ON CONFLICT (study_id) DO UPDATE SET
                 dirty = CASE WHEN state = 'sending' THEN 1 ELSE dirty END,
                 state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END,
                 not_before = CASE WHEN state = 'failed' THEN not_before ELSE 0 END,
                 updated_at = excluded.updated_at
               WHERE NOT (state = 'queued' AND not_before = 0)
                 AND NOT (state = 'sending' AND dirty = 1)""",
            (study_id, now, now),
        )

    def next_due(self) -> str | None:
        """The oldest study due for sending (including one a crash left 'sending')."""
        row = self.one(
            """SELECT study_id FROM studies
               WHERE state IN ('queued', 'sending', 'failed') AND not_before <= ?
               ORDER BY queued_at LIMIT 1""",
            (self.clock(),),
        )
        return row[0] if row else None

    def mark_sending(self, study_id: str) -> None:
        self.run(
            "UPDATE studies SET state = 'sending', dirty = 0, updated_at = ? WHERE study_id = ?",
            (self.clock(), study_id),
        )

    def mark_delivered(
        self, study_id: str, instances: int, bytes_sent: int, complete: bool = True
    ) -> None:
        """Delivered (or partial if the study was not stable yet), unless instances
        arrived meanwhile: then it goes again at once."""
        now = self.clock()
        self.run(
            """UPDATE studies SET state = CASE WHEN dirty = 1 THEN 'queued' ELSE ? END,
                 dirty = 0, delivered_at = ?, instances = ?, bytes_sent = bytes_sent + ?,
                 last_error = NULL, attempts = 0, updated_at = ?
               WHERE study_id = ?""",
            ("delivered" if complete else "partial", now, instances, bytes_sent, now, study_id),
        )

    def requeue_partial(self) -> int:
        """At start: studies left partial get a final pass (Orthanc forgets, across a
        restart, that they were still arriving, and will not announce them stable)."""
        return self.run(
            "UPDATE studies SET state = 'queued', updated_at = ? WHERE state = 'partial'",
            (self.clock(),),
        )

    # -- per-instance hashes (delivery.HashCache) ---------------------------------------
    def known(self, study_id: str) -> dict[str, tuple[str, str, bool]]:
        rows = self.all(
            "SELECT instance_id, sop_uid, sha256, confirmed FROM instances WHERE study_id = ?",
            (study_id,),
        )
        return {r[0]: (r[1], r[2], bool(r[3])) for r in rows}

    def remember(self, study_id: str, rows: list[tuple[str, str, str]]) -> None:
        self.run_many(
            """INSERT INTO instances (instance_id, study_id, sop_uid, sha256)
               VALUES (?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET
               sop_uid = excluded.sop_uid, sha256 = excluded.sha256, confirmed = 0""",
            [(iid, study_id, sop, sha) for iid, sop, sha in rows],
        )

    def confirm(self, instance_ids: list[str]) -> None:
        self.run_many(
            "UPDATE instances SET confirmed = 1 WHERE instance_id = ?",
            [(iid,) for iid in instance_ids],
        )

    def forget_instance(self, instance_id: str) -> None:
        """An instance was (re)stored here: its bytes may differ from what was hashed."""
        self.run("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def mark_failed(self, study_id: str, reason: str) -> float:
        """Record a failed attempt; returns the seconds until the next one."""
        with self.transaction() as db:
            row = db.execute("SELECT attempts FROM studies WHERE study_id = ?", (study_id,))
            found = row.fetchone()
            attempts = (found[0] if found else 0) + 1
            delay = min(self.retry_max_s, 2.0 ** (attempts - 1))
            now = self.clock()
            db.execute(
                """UPDATE studies SET state = 'failed', attempts = ?, last_error = ?,
                     not_before = ?, updated_at = ? WHERE study_id = ?""",
                (attempts, reason[:500], now + delay, now, study_id),
            )
        return delay

    def status(self, study_id: str) -> StudyStatus | None:
        row = self.one(
            """SELECT study_id, state, attempts, last_error, queued_at, updated_at,
                      delivered_at, instances, bytes_sent FROM studies WHERE study_id = ?""",
            (study_id,),
        )
        return StudyStatus(*row) if row else None

    def counters(self) -> dict[str, Any]:
        """For monitoring: queue depth, failures, bytes sent, last success."""
        depth, failing = self.one(
            """SELECT COUNT(*), COALESCE(SUM(state = 'failed'), 0) FROM studies
               WHERE state IN ('queued', 'sending', 'partial', 'failed')"""
        ) or (0, 0)
        delivered, sent, last = self.one(
            """SELECT COUNT(*), COALESCE(SUM(bytes_sent), 0), MAX(delivered_at)
               FROM studies WHERE state = 'delivered'"""
        ) or (0, 0, None)
        return {
            "queue_depth": depth,
            "failing": failing,
            "delivered_studies": delivered,
            "bytes_sent": sent,
            "last_success": last,
        }
