"""The audit writer against the stack's PostgreSQL: a record the database refuses does not
stop the trail. The others of its batch are written, and the refused one is written
without its free-text fields."""

from __future__ import annotations

import asyncio
import secrets

import psycopg
from psycopg_pool import AsyncConnectionPool

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings
from indexer.services.audit import event
from indexer.services.audit_writer import AuditWriter


def test_a_refused_record_does_not_stop_the_trail(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    dsn = load_context(stack_settings).pg_dsn("indexer", "indexer", "db_indexer")
    action = f"test.writer.{secrets.token_hex(4)}"
    good = [event(None, action, f"study:1.2.{n}", "127.0.0.1", 200) for n in range(3)]
    refused = event(None, action, "study:9.9", "127.0.0.1", 200) | {"resource": "bad\x00"}

    async def write() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2) as pool:
            writer = AuditWriter(pool)
            for record in [good[0], refused, *good[1:]]:
                await writer.record(record)
            await writer.flush()
            assert writer._pending == []  # nothing left to fail the next flush

    asyncio.run(write())
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT resource FROM audit_events WHERE action = %s ORDER BY id", (action,)
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(
        ["study:1.2.0", "study:1.2.1", "study:1.2.2", "(refused)"]
    )
