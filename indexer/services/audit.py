"""Writing, sealing, verifying and purging the audit trail (see models/audit.py).

Rows are inserted as requests finish (one INSERT on the async pool, no lock). The one
sealer of the deployment (a PostgreSQL advisory lock is its lease: any number of indexer
nodes run one, one works) gives every committed unsealed row the next `seal_seq` and chains
in that order, so a row whose transaction commits late is sealed late, never skipped.
Verification walks the chain from the retention anchor and names each row whose content no
longer matches its hash, each place where rows went missing, and each row left unsealed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, cast

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import CursorResult, String, text
from sqlalchemy.orm import Session

from ..models import AuditEvent
from .leased_loop import LeasedLoop

log = logging.getLogger(__name__)
GENESIS = bytes(32)
LEASE_LOCK = 7401  # held (session level) by the deployment's working sealer
SEAL_LOCK = 7402  # held (transaction level) by whoever seals a batch, the CLI too
# A committed row is sealed within a second or two; verify names one still unsealed after
# this long (a transaction that stays open longer than this is itself worth a look).
UNSEALED_AFTER_S = 10.0
COLUMNS = (
    "id", "at", "actor", "username", "roles", "institution", "action", "resource", "purpose",
    "source", "outcome",
)  # fmt: skip
# Added by migration 0007; a row with all of them at their defaults hashes as before.
DETAIL = (
    "method", "filters", "count", "calling_ae", "called_ae", "answers", "occurred_at",
    "event_id",
)  # fmt: skip
DETAIL_DEFAULTS: dict[str, Any] = {name: None for name in DETAIL} | {"count": 1}
INSERT_SQL = """
INSERT INTO audit_events (actor, username, roles, institution, action, resource, purpose,
                          source, outcome, method, filters, count, calling_ae, called_ae,
                          answers, occurred_at, event_id)
VALUES (%(actor)s, %(username)s, %(roles)s, %(institution)s, %(action)s, %(resource)s,
        %(purpose)s, %(source)s, %(outcome)s, %(method)s, %(filters)s, %(count)s,
        %(calling_ae)s, %(called_ae)s, %(answers)s, %(occurred_at)s, %(event_id)s)
"""


# A value the database refuses (too long, or with a NUL) would fail the writer's whole batch,
# at every flush: the resource of a refused request with an over-long path, say. Made to fit.
# the widths of the text columns that have one (a value past it is cut, see `record`)
WIDTHS: dict[str, int] = {
    c.name: c.type.length
    for c in AuditEvent.__table__.columns
    if isinstance(c.type, String) and c.type.length is not None
}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def canonical(row: dict[str, Any]) -> bytes:
    values = [_plain(row[c]) for c in COLUMNS]
    if any(row.get(c, DETAIL_DEFAULTS[c]) != DETAIL_DEFAULTS[c] for c in DETAIL):
        values.append([_plain(row[c]) for c in DETAIL])
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
    **detail: Any,
) -> dict[str, Any]:
    """One audit record; `who` is the caller (a Principal) or None when unauthenticated;
    `detail`: method, filters (JSON text), and for an edge's DICOM operation calling_ae,
    called_ae, answers, occurred_at, event_id."""
    unknown = set(detail) - set(DETAIL)
    if unknown:
        raise TypeError(f"not audit record fields: {sorted(unknown)}")
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
        **DETAIL_DEFAULTS,
        **detail,
    }
    if len(record["filters"] or "") > WIDTHS["filters"]:  # cut JSON would not be JSON
        record["filters"] = '{"(truncated)":"all"}'
    for column, width in WIDTHS.items():
        value = record[column]
        if isinstance(value, str):
            record[column] = value.replace("\x00", "")[:width]
    return record


async def record_now(pool: AsyncConnectionPool, records: list[dict[str, Any]]) -> None:
    """Write records in one transaction before answering (an edge deletes what it sent
    once it has the answer); an event_id already on record adds nothing."""
    async with pool.connection() as conn, conn.cursor() as cursor:
        await cursor.executemany(
            INSERT_SQL.rstrip() + " ON CONFLICT (event_id) DO NOTHING", records
        )


@dataclass
class Problem:
    id: int
    reason: str


FIELDS = ", ".join(("seal_seq", *COLUMNS, *DETAIL, "prev_hash", "hash"))


def _chained(session: Session, after_seq: int, limit: int) -> list[dict[str, Any]]:
    result = session.execute(
        text(
            f"SELECT {FIELDS} FROM audit_events "  # noqa: S608 - fixed names
            "WHERE seal_seq > :after ORDER BY seal_seq LIMIT :limit"
        ),
        {"after": after_seq, "limit": limit},
    )
    return [dict(r._mapping) for r in result]


def _anchor(session: Session) -> tuple[int, bytes]:
    """(seal_seq, hash) of the last purged row, where the chain starts."""
    row = session.execute(
        text("SELECT last_purged_seq, last_purged_hash FROM audit_anchor WHERE id = 1")
    ).first()
    return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)


def seal(session: Session, min_age_s: float = 0.0, batch: int = 5000) -> int:
    """Chain every committed unsealed row (older than min_age_s), whatever its id, after
    the last sealed one; returns how many. One sealer at a time (a transaction lock)."""
    if not session.execute(text(f"SELECT pg_try_advisory_xact_lock({SEAL_LOCK})")).scalar():
        return 0  # someone else is sealing right now
    last = session.execute(
        text(
            "SELECT seal_seq, hash FROM audit_events WHERE seal_seq IS NOT NULL "
            "ORDER BY seal_seq DESC LIMIT 1"
        )
    ).first()
    seq, prev = (int(last[0]), bytes(last[1])) if last else _anchor(session)
    rows = session.execute(
        text(
            f"SELECT {FIELDS} FROM audit_events "  # noqa: S608 - fixed names
            "WHERE hash IS NULL AND at <= now() - make_interval(secs => :age) "
            "ORDER BY id LIMIT :limit"
        ),
        {"age": min_age_s, "limit": batch},
    )
    updates = []
    for row in (dict(r._mapping) for r in rows):
        seq += 1
        digest = chain(prev, row)
        updates.append({"s": seq, "p": prev, "h": digest, "id": row["id"]})
        prev = digest
    if updates:
        session.execute(
            text("UPDATE audit_events SET seal_seq = :s, prev_hash = :p, hash = :h WHERE id = :id"),
            updates,
        )
    return len(updates)


def verify(
    session: Session, unsealed_after_s: float = UNSEALED_AFTER_S
) -> tuple[int, list[Problem]]:
    """(rows checked, problems): each edited row, each gap where rows were removed, each
    row not sealed `unsealed_after_s` after it was written, each hash outside the chain."""
    after, prev = _anchor(session)
    checked, problems = 0, []
    previous_id: int | None = None
    while rows := _chained(session, after, 10_000):
        for row in rows:
            after = row["seal_seq"]
            checked += 1
            if row["prev_hash"] is None or bytes(row["prev_hash"]) != prev:
                where = f"after id {previous_id}" if previous_id else "at the chain's start"
                problems.append(
                    Problem(row["id"], f"the row before it is missing or altered ({where})")
                )
            if row["hash"] is None or chain(bytes(row["prev_hash"] or b""), row) != bytes(
                row["hash"]
            ):
                problems.append(Problem(row["id"], "its content does not match its hash (edited)"))
            prev = bytes(row["hash"] or b"")
            previous_id = row["id"]
    loose = session.execute(
        text(
            "SELECT id, hash IS NULL AS unsealed FROM audit_events "
            "WHERE seal_seq IS NULL AND (hash IS NOT NULL "
            "  OR at < now() - make_interval(secs => :age)) ORDER BY id"
        ),
        {"age": unsealed_after_s},
    )
    for event in loose:
        problems.append(
            Problem(
                event.id,
                f"not sealed {unsealed_after_s:g} s after it was written"
                if event.unsealed
                else "a hash outside the chain (inserted sealed)",
            )
        )
    return checked, problems


def purge(session: Session, retention_days: int) -> int:
    """Delete sealed rows older than the retention period, up to the first younger one in
    the chain; the anchor keeps the chain. Unsealed rows are never purged."""
    if retention_days < 180:
        raise ValueError("retention must be at least 180 days")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)
    last = session.execute(
        text(
            "SELECT seal_seq, id, hash FROM audit_events WHERE seal_seq < COALESCE("
            "  (SELECT MIN(seal_seq) FROM audit_events WHERE seal_seq IS NOT NULL "
            "   AND at >= :cutoff), 9223372036854775807) "
            "ORDER BY seal_seq DESC LIMIT 1"
        ),
        {"cutoff": cutoff},
    ).first()
    if last is None:
        return 0
    session.execute(text("SET LOCAL imgcloud.audit_purge = 'on'"))
    result = session.execute(
        text("DELETE FROM audit_events WHERE seal_seq <= :seq"), {"seq": last[0]}
    )
    deleted = cast(CursorResult[Any], result).rowcount
    session.execute(
        text(
            "INSERT INTO audit_anchor (id, last_purged_id, last_purged_seq, last_purged_hash) "
            "VALUES (1, :id, :seq, :h) ON CONFLICT (id) DO UPDATE SET last_purged_id = :id, "
            "last_purged_seq = :seq, last_purged_hash = :h, purged_at = now()"
        ),
        {"id": last[1], "seq": last[0], "h": last[2]},
    )
    return int(deleted)


class Sealer(LeasedLoop):
    """The deployment's sealer: seals every `every_s` while it holds the lease (see
    leased_loop: released by PostgreSQL if this process or its connection dies, and then
    another node's sealer takes over). `stop()` (SIGTERM) lets the current batch finish.
    Runs as `python -m indexer audit seal --every 1`, or beside uvicorn under `python -m
    indexer serve` (one per node, not per worker)."""

    lock_id = LEASE_LOCK
    name = "audit sealer"
    application_name = "imgcloud-audit-sealer"

    def work(self) -> bool:
        with Session(self.engine) as session, session.begin():
            return seal(session) >= 5000
