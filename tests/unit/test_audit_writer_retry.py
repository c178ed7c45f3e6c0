"""The audit writer keeps what the database could not take and tries again by itself: a
worker that gets no further request must not hold its records indefinitely."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from indexer.services.audit import AuditWriter, event


class FlakyPool:
    """Stands in for the connection pool: the first `failures` connections fail as an
    unreachable database does; later ones record what they were asked to write."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[dict[str, Any]] = []

    @asynccontextmanager
    async def connection(self):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("connection refused")
        yield self

    @asynccontextmanager
    async def cursor(self):  # type: ignore[no-untyped-def]
        yield self

    async def executemany(self, _sql: str, rows: list[dict[str, Any]]) -> None:
        self.written.extend(rows)


def run_writer(failures: int, wait_s: float) -> tuple[FlakyPool, AuditWriter]:
    pool = FlakyPool(failures)
    writer = AuditWriter(pool, flush_s=0.01, retry_max_s=0.05)  # type: ignore[arg-type]

    async def scenario() -> None:
        await writer.record(event(None, "api.get_exam", "exam:H1/1", "127.0.0.1", 401))
        await asyncio.sleep(wait_s)  # and no further record arrives

    asyncio.run(scenario())
    return pool, writer


def test_records_a_failed_flush_kept_are_written_without_another_request() -> None:
    pool, writer = run_writer(failures=3, wait_s=0.5)
    assert [r["action"] for r in pool.written] == ["api.get_exam"]
    assert writer._pending == []


def test_records_stay_pending_while_the_database_is_away() -> None:
    pool, writer = run_writer(failures=10_000, wait_s=0.3)
    assert pool.written == []
    assert [r["outcome"] for r in writer._pending] == [401]  # kept, never dropped
    assert pool.failures < 10_000 - 3  # and tried again meanwhile, backing off


def test_a_flush_reports_whether_the_database_took_the_batch() -> None:
    async def scenario() -> list[bool]:
        writer = AuditWriter(FlakyPool(failures=1))  # type: ignore[arg-type]
        writer._pending.append(event(None, "api.x", None, None, 200))
        return [await writer.flush(), await writer.flush(), await writer.flush()]

    assert asyncio.run(scenario()) == [False, True, True]


class SlowPool(FlakyPool):
    """Each write takes a while, as a real INSERT does."""

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        await asyncio.sleep(0.05)
        await super().executemany(sql, rows)


def test_a_record_that_arrives_while_a_batch_is_written_goes_with_the_next() -> None:
    pool = SlowPool(failures=0)
    writer = AuditWriter(pool, flush_s=0.01)  # type: ignore[arg-type]

    async def scenario() -> None:
        await writer.record(event(None, "api.first", None, "127.0.0.1", 200))
        await asyncio.sleep(0.03)  # the first batch is being written
        await writer.record(event(None, "api.second", None, "127.0.0.1", 401))
        await asyncio.sleep(0.3)  # and nothing else arrives

    asyncio.run(scenario())
    assert [r["action"] for r in pool.written] == ["api.first", "api.second"]
