"""The audit writer keeps what the database could not take and tries again by itself: a
worker that gets no further request must not hold its records indefinitely."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from indexer.services.audit import event
from indexer.services.audit_writer import AuditWriter


class FlakyPool:
    """Stands in for the connection pool: the first `failures` connections fail as an
    unreachable database does; later ones record what they were asked to write."""

    def __init__(self, failures: int, error: type[Exception] = psycopg.OperationalError) -> None:
        self.failures = failures
        self.error = error
        self.written: list[dict[str, Any]] = []
        self.batches = 0

    @asynccontextmanager
    async def connection(self):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise self.error("connection refused")
        yield self

    @asynccontextmanager
    async def cursor(self):  # type: ignore[no-untyped-def]
        yield self

    async def executemany(self, _sql: str, rows: list[dict[str, Any]]) -> None:
        self.batches += 1
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
    tries = 10_000 - pool.failures
    assert 3 < tries <= 12  # tried again meanwhile, backing off (0.01, 0.02, 0.04, 0.05 s...)


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
    assert pool.batches == 2  # the second arrived after the first batch was taken


def test_a_read_only_database_keeps_the_batch_rather_than_dropping_it() -> None:
    """After a failover the old primary is read-only: no record of the batch is at fault."""

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        pool = FlakyPool(failures=1, error=psycopg.errors.ReadOnlySqlTransaction)
        writer = AuditWriter(pool)  # type: ignore[arg-type]
        writer._pending += [event(None, f"api.{n}", None, None, 200) for n in range(3)]
        return await writer.flush(), writer._pending

    written, pending = asyncio.run(scenario())
    assert not written and [r["action"] for r in pending] == ["api.0", "api.1", "api.2"]


class RefusingPool(FlakyPool):
    """Refuses any batch holding a record marked bad; goes away after `alive` writes."""

    def __init__(self, alive: int) -> None:
        super().__init__(failures=0)
        self.alive = alive

    @asynccontextmanager
    async def connection(self):  # type: ignore[no-untyped-def]
        if self.alive <= 0:
            raise psycopg.OperationalError("connection refused")
        self.alive -= 1
        yield self

    async def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        if any(r["resource"] == "bad" for r in rows):
            raise psycopg.DataError("value too long")
        await super().executemany(sql, rows)


def test_records_sent_one_by_one_are_kept_when_the_database_goes_away_meanwhile() -> None:
    pool = RefusingPool(alive=3)  # the batch, then records 0 and 1 alone; then it is away

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        writer = AuditWriter(pool)  # type: ignore[arg-type]
        writer._pending += [event(None, f"api.{n}", None, None, 401) for n in range(4)]
        writer._pending[1]["resource"] = "bad"  # refused alone too: written bare
        return await writer.flush(), writer._pending

    written, pending = asyncio.run(scenario())
    assert [(r["action"], r["resource"]) for r in pool.written] == [("api.0", None)]
    assert not written
    assert [r["action"] for r in pending] == ["api.1", "api.2", "api.3"]  # none dropped


def test_closing_waits_for_the_batch_being_written_and_writes_the_rest() -> None:
    pool = SlowPool(failures=0)

    async def scenario() -> None:
        writer = AuditWriter(pool, flush_s=0.01)  # type: ignore[arg-type]
        await writer.record(event(None, "api.first", None, "127.0.0.1", 200))
        await asyncio.sleep(0.03)  # being written
        await writer.record(event(None, "api.second", None, "127.0.0.1", 200))
        await writer.aclose()  # the worker stops: asyncio.run then cancels what is left

    asyncio.run(scenario())
    assert sorted(r["action"] for r in pool.written) == ["api.first", "api.second"]


def test_a_flush_cancelled_while_writing_keeps_its_batch() -> None:
    async def scenario() -> list[dict[str, Any]]:
        writer = AuditWriter(SlowPool(failures=0))  # type: ignore[arg-type]
        writer._pending.append(event(None, "api.x", None, None, 200))
        flushing = asyncio.get_running_loop().create_task(writer.flush())
        await asyncio.sleep(0.01)
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        return writer._pending

    assert [r["action"] for r in asyncio.run(scenario())] == ["api.x"]
