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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class ForwardQueue:
    """Thread-safe; every change is committed before the call returns."""

    def __init__(
        self, path: Path, *, retry_max_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a crash must not lose a queued study
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(studies)")}
        if "dirty" not in columns:  # queues created before streaming
            self._db.execute("ALTER TABLE studies ADD COLUMN dirty INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.Lock()
        self.retry_max_s = retry_max_s
        self.clock = clock

    def enqueue(self, study_id: str) -> None:
        now = self.clock()
        with self._lock:
            self._db.execute(
                """INSERT INTO studies (study_id, state, queued_at, updated_at)
                   VALUES (?, 'queued', ?, ?)
                   ON CONFLICT (study_id) DO UPDATE SET
                     dirty = CASE WHEN state = 'sending' THEN 1 ELSE dirty END,
                     state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END,
                     not_before = CASE WHEN state = 'failed' THEN not_before ELSE 0 END,
                     updated_at = excluded.updated_at""",
                (study_id, now, now),
            )

    def next_due(self) -> str | None:
        """The oldest study due for sending (including one a crash left 'sending')."""
        with self._lock:
            row = self._db.execute(
                """SELECT study_id FROM studies
                   WHERE state IN ('queued', 'sending', 'failed') AND not_before <= ?
                   ORDER BY queued_at LIMIT 1""",
                (self.clock(),),
            ).fetchone()
        return row[0] if row else None

    def mark_sending(self, study_id: str) -> None:
        self._set(study_id, "state = 'sending', dirty = 0")

    def mark_delivered(
        self, study_id: str, instances: int, bytes_sent: int, complete: bool = True
    ) -> None:
        """Delivered (or partial if the study was not stable yet), unless instances
        arrived meanwhile: then it goes again at once."""
        now = self.clock()
        done = "delivered" if complete else "partial"
        self._set(
            study_id,
            f"state = CASE WHEN dirty = 1 THEN 'queued' ELSE '{done}' END, dirty = 0, "
            "delivered_at = ?, instances = ?, "
            "bytes_sent = bytes_sent + ?, last_error = NULL, attempts = 0",
            (now, instances, bytes_sent),
        )

    def requeue_partial(self) -> int:
        """At start: studies left partial get a final pass (Orthanc forgets, across a
        restart, that they were still arriving, and will not announce them stable)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE studies SET state = 'queued', updated_at = ? WHERE state = 'partial'",
                (self.clock(),),
            )
        return cursor.rowcount

    # -- per-instance hashes (delivery.HashCache) ---------------------------------------
    def known(self, study_id: str) -> dict[str, tuple[str, str, bool]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, sop_uid, sha256, confirmed FROM instances WHERE study_id = ?",
                (study_id,),
            ).fetchall()
        return {r[0]: (r[1], r[2], bool(r[3])) for r in rows}

    def remember(self, study_id: str, rows: list[tuple[str, str, str]]) -> None:
        with self._lock:
            self._db.executemany(
                """INSERT INTO instances (instance_id, study_id, sop_uid, sha256)
                   VALUES (?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET
                   sop_uid = excluded.sop_uid, sha256 = excluded.sha256, confirmed = 0""",
                [(iid, study_id, sop, sha) for iid, sop, sha in rows],
            )

    def confirm(self, instance_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE instances SET confirmed = 1 WHERE instance_id = ?",
                [(iid,) for iid in instance_ids],
            )

    def forget_instance(self, instance_id: str) -> None:
        """An instance was (re)stored here: its bytes may differ from what was hashed."""
        with self._lock:
            self._db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def mark_failed(self, study_id: str, reason: str) -> float:
        """Record a failed attempt; returns the seconds until the next one."""
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM studies WHERE study_id = ?", (study_id,)
            ).fetchone()
        attempts = (row[0] if row else 0) + 1
        delay = min(self.retry_max_s, 2.0 ** (attempts - 1))
        self._set(
            study_id,
            "state = 'failed', attempts = ?, last_error = ?, not_before = ?",
            (attempts, reason[:500], self.clock() + delay),
        )
        return delay

    def _set(self, study_id: str, assignments: str, params: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._db.execute(
                f"UPDATE studies SET {assignments}, updated_at = ? WHERE study_id = ?",  # noqa: S608 - fixed fragments
                (*params, self.clock(), study_id),
            )

    def status(self, study_id: str) -> StudyStatus | None:
        with self._lock:
            row = self._db.execute(
                """SELECT study_id, state, attempts, last_error, queued_at, updated_at,
                          delivered_at, instances, bytes_sent FROM studies WHERE study_id = ?""",
                (study_id,),
            ).fetchone()
        return StudyStatus(*row) if row else None

    def counters(self) -> dict[str, Any]:
        """For monitoring: queue depth, failures, bytes sent, last success."""
        with self._lock:
            depth, failing = self._db.execute(
                """SELECT COUNT(*), COALESCE(SUM(state = 'failed'), 0) FROM studies
                   WHERE state IN ('queued', 'sending', 'partial', 'failed')"""
            ).fetchone()
            delivered, sent, last = self._db.execute(
                """SELECT COUNT(*), COALESCE(SUM(bytes_sent), 0), MAX(delivered_at)
                   FROM studies WHERE state = 'delivered'"""
            ).fetchone()
        return {
            "queue_depth": depth,
            "failing": failing,
            "delivered_studies": delivered,
            "bytes_sent": sent,
            "last_success": last,
        }

    def close(self) -> None:
        self._db.close()
