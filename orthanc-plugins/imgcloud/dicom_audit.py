"""The edge's audit of DICOM operations (#18, 4): every C-FIND and C-MOVE it answers becomes
an event, kept durably in an outbox beside the other edge queues and sent in batches to
the indexer (`POST /api/v1/audit/edge-events`, through the gateway, with the hospital
gateway's token), which pseudonymises the personal values and chains the events into the
audit trail.

The query of an event may hold personal values (PatientName, PatientID): it is sealed with
the edge's key ring before it touches disk, and never logged. The indexer is idempotent on
`event_id`, so an event is resent until it is accepted and only then removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from .errors import ServiceCallError
from .sqlite_store import SealedStore
from .worker import Worker

log = logging.getLogger(__name__)

Action = Literal[
    "dicom.c-find", "dicom.c-move", "dicom.c-get", "dicom.c-store", "dicom.association-refused"
]
Outcome = Literal["ok", "refused", "failed"]
LEVELS = {"PATIENT": "PATIENT", "STUDY": "STUDY", "SERIES": "SERIES", "IMAGE": "IMAGE"}
LEVELS["INSTANCE"] = "IMAGE"  # Orthanc's name for the image level
BATCH_MAX = 500  # the indexer takes at most this many events per request
MAX_KEYS = 64
MAX_VALUE = 1024
# Answers that resending the same batch cannot change: the batch is split to find the
# event at fault, which is set aside so that it cannot hold up the others.
PERMANENT = frozenset({400, 422})

SCHEMA = """
CREATE TABLE IF NOT EXISTS dicom_events (
    event_id     TEXT PRIMARY KEY,
    recorded_at  REAL NOT NULL,
    public       TEXT NOT NULL,   -- JSON: the event without its query
    sealed       BLOB NOT NULL,   -- the query (may hold names, IDs), envelope-encrypted
    state        TEXT NOT NULL    -- pending | refused (by the indexer); accepted ones go
);
CREATE INDEX IF NOT EXISTS dicom_events_pending ON dicom_events (state, recorded_at);
"""


def _text(value: object, limit: int = MAX_VALUE) -> str:
    return str(value if value is not None else "").strip()[:limit]


def build_event(
    action: Action,
    *,
    calling_ae: str,
    called_ae: str,
    source: str,
    level: str,
    query: Mapping[str, object],
    answers: int,
    outcome: Outcome,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """One event as the indexer's contract has it (a fresh uuid4, UTC time)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    asked = {}
    for keyword, value in list(query.items())[:MAX_KEYS]:
        asked[_text(keyword, 64)] = _text(value)
    return {
        "event_id": str(uuid.uuid4()),
        "at": moment.isoformat(timespec="milliseconds"),
        "action": action,
        "calling_ae": _text(calling_ae, 16),
        "called_ae": _text(called_ae, 16),
        "source": _text(source, 64),
        "level": LEVELS.get(_text(level).upper(), ""),
        "query": asked,
        "answers": max(0, int(answers)),
        "outcome": outcome,
    }


class AuditOutbox(SealedStore):
    """Events waiting for the indexer, in SQLite (WAL), their queries sealed."""

    migrations = (SCHEMA,)  # 1: as the outbox was first written (#18)

    def add(self, event: dict[str, Any]) -> None:
        event_id = event["event_id"]
        public = {k: v for k, v in event.items() if k != "query"}
        sealed = self.seal(json.dumps(event["query"], ensure_ascii=False).encode(), event_id)
        self.run(
            "INSERT OR IGNORE INTO dicom_events (event_id, recorded_at, public, sealed, state) "
            "VALUES (?, ?, ?, ?, 'pending')",
            (event_id, self.clock(), json.dumps(public), sealed),
        )

    def pending(self, limit: int = BATCH_MAX) -> list[dict[str, Any]]:
        """The oldest events not yet accepted, their queries opened."""
        rows = self.all(
            "SELECT event_id, public, sealed FROM dicom_events WHERE state = 'pending' "
            "ORDER BY recorded_at, rowid LIMIT ?",
            (limit,),
        )
        events = []
        for event_id, public, sealed in rows:
            query = json.loads(self.unseal(sealed, event_id))
            events.append(json.loads(public) | {"query": query})
        return events

    def accepted(self, event_ids: list[str]) -> None:
        self.run_many("DELETE FROM dicom_events WHERE event_id = ?", [(e,) for e in event_ids])

    def set_aside(self, event_id: str) -> None:
        self.run("UPDATE dicom_events SET state = 'refused' WHERE event_id = ?", (event_id,))

    def counters(self) -> dict[str, int]:
        found = dict(self.all("SELECT state, count(*) FROM dicom_events GROUP BY state"))
        return {"audit_pending": found.get("pending", 0), "audit_refused": found.get("refused", 0)}


class EventSink(Protocol):
    def send_edge_events(self, events: list[dict[str, Any]]) -> int: ...


class AuditSender(Worker):
    """Sends the outbox to the indexer in batches; an outage keeps everything for later."""

    name = "imgcloud-audit"

    def __init__(self, outbox: AuditOutbox, indexer: EventSink, every_s: float = 5) -> None:
        super().__init__(every_s=every_s)
        self.outbox = outbox
        self.indexer = indexer

    def _send(self, batch: list[dict[str, Any]]) -> int:
        """Send one batch; a batch refused for good is split until the culprit is alone."""
        try:
            self.indexer.send_edge_events(batch)
        except ServiceCallError as exc:
            if exc.status not in PERMANENT:
                raise
            if len(batch) == 1:
                log.warning("audit event %s set aside: %s", batch[0]["event_id"], exc)
                self.outbox.set_aside(batch[0]["event_id"])
                return 0
            half = len(batch) // 2
            return self._send(batch[:half]) + self._send(batch[half:])
        self.outbox.accepted([e["event_id"] for e in batch])
        return len(batch)

    def run_once(self) -> int:
        """Send until the outbox is empty; raises ServiceCallError on an outage."""
        sent = 0
        while batch := self.outbox.pending(BATCH_MAX):
            sent += self._send(batch)
        return sent

    def work(self) -> bool:
        try:
            self.run_once()
        except ServiceCallError as exc:  # an outage, not a bug: no backoff, no traceback
            log.warning("audit events not accepted by the indexer yet: %s", exc)
        return False  # a round empties the outbox; what fails waits for `every_s`
