"""The API's audit writer: records queued by the request handlers and written in batches,
kept through a database outage and written before the worker stops (see services/audit.py
for the record itself and the sealing of the trail)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .audit import INSERT_SQL

log = logging.getLogger(__name__)
# What says that one record is bad (a NUL, a value too long) rather than that the database
# cannot take any: only these send a batch one by one; any other error keeps the batch.
REFUSED = (psycopg.DataError, psycopg.IntegrityError)


def aggregate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identical granted records of one batch as one row with their count (a viewer's
    repeats). A refusal, an edge's event, or anything that differs keeps its own row."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in batch:
        if record["outcome"] >= 400 or record.get("event_id") is not None:
            rows.append(record)
            continue
        key = tuple((k, record[k]) for k in sorted(record) if k != "count")
        if key in seen:
            seen[key]["count"] += record["count"]
            continue
        seen[key] = dict(record)
        rows.append(seen[key])
    return rows


class AuditWriter:
    """Async writer used by the API. Records are queued and written in batches every
    `flush_s` (one transaction for many requests): a crash can lose the records of that
    window, like PostgreSQL's own asynchronous commit, and during a database outage those
    kept since it began (at most `max_pending`; past that the oldest are dropped, loudly).
    Every decision is a row, except that identical granted ones within one batch are one row
    with their `count`. While the database cannot take them (away, no connection to give,
    read-only after a failover) the records are kept and tried again, backing off to
    `retry_max_s`, without waiting for a next request: a worker that gets none would
    otherwise hold them indefinitely. `aclose` writes what is left before the worker stops.
    A retry after a connection lost during COMMIT may write a batch twice (at least once)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        flush_s: float = 0.1,
        retry_max_s: float = 5.0,
        max_pending: int = 100_000,
    ) -> None:
        if flush_s <= 0 or retry_max_s < flush_s or max_pending < 1:
            raise ValueError("audit writer: flush_s > 0, retry_max_s >= flush_s, max_pending >= 1")
        self.pool = pool
        self.flush_s = flush_s
        self.retry_max_s = retry_max_s
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._one_flush = asyncio.Lock()  # a flush waits for the one writing
        self._closing = False

    async def record(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Flush until nothing is pending (records that arrive meanwhile go with the next
        batch); after a failed flush wait longer each time, up to retry_max_s."""
        delay = self.flush_s
        while self._pending and not self._closing:
            await asyncio.sleep(delay)
            written = await self.flush()
            delay = self.flush_s if written else min(delay * 2, self.retry_max_s)

    async def flush(self) -> bool:
        """Write what is pending; False when the database could not take it (it is kept)."""
        async with self._one_flush:
            batch, self._pending = aggregate(self._pending), []
            if not batch:
                return True
            try:
                await self._insert(batch)
            except REFUSED:
                # One record the database refuses must not stop the trail (it would fail
                # every later batch too): one by one, a refused one again without its
                # free-text fields, and only then dropped, loudly. Messages never carry
                # the events' data.
                log.exception("%d audit records refused as a batch: one by one", len(batch))
                return await self._insert_each(batch)
            except psycopg.Error:  # the database cannot take any: kept for the next flush
                log.exception("%d audit records could not be written yet", len(batch))
                self._keep(batch)
                return False
            except BaseException:  # cancelled (the worker stops) or a bug: kept, re-raised
                self._keep(batch)
                raise
            return True

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop retrying in the background and write what is pending, once more if need be;
        what still cannot be written is counted in the log."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
        if self._pending:
            await self.flush()
        if self._pending:
            log.error("%d audit records could not be written before shutdown", len(self._pending))

    def _keep(self, records: list[dict[str, Any]]) -> None:
        self._pending = records + self._pending
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            self._pending = self._pending[excess:]
            log.error("%d audit records dropped: more than %d waiting", excess, self.max_pending)

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(INSERT_SQL, batch)

    async def _insert_each(self, batch: list[dict[str, Any]]) -> bool:
        for i, record in enumerate(batch):
            if not await self._insert_alone(record):  # the database went away meanwhile
                self._keep(batch[i:])
                return False
        return True

    async def _insert_alone(self, record: dict[str, Any]) -> bool:
        """Write one record, else it without its free-text fields, else drop it (loudly);
        False when the database cannot take any (the record is not written)."""
        bare = record | {"resource": "(refused)", "purpose": None, "filters": None}
        for attempt in (record, bare):
            try:
                await self._insert([attempt])
                return True
            except REFUSED:
                continue
            except psycopg.Error:
                return False
        log.error("an audit record of action %r was refused and dropped", record.get("action"))
        return True
