"""Wakes the edges' rules long polls when central issues a new version, on any node.

A new version is announced with `NOTIFY fleet_rules, '<gateway id>'` in the transaction
that stores it (PostgreSQL delivers it at commit, to every listener). Each API process
keeps ONE listening connection of its own (not the pool's), whatever the number of
waiting polls: a waiting poll holds no database connection, only an asyncio event. While
the listening connection is down (database restart, failover), waiters re-check every
RECHECK_S instead, so a version is never missed for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
CHANNEL = "fleet_rules"
RECHECK_S = 2.0  # how often a waiter looks itself while not listening
RETRY_S = 1.0


def announce(session: Session, gateway_id: str) -> None:
    """In the caller's transaction: tell the listeners once it commits."""
    session.execute(
        text("SELECT pg_notify(:channel, :gateway)"), {"channel": CHANNEL, "gateway": gateway_id}
    )


class RulesWatch:
    """The listening connection and the waiting polls of one process (one event loop)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.listening = False
        self.generation = 0  # counts the listening connections made
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def register(self, gateway_id: str) -> asyncio.Event:
        """Before the poll's own check: a version stored after it still wakes it."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        event = asyncio.Event()
        self._waiters.setdefault(gateway_id, set()).add(event)
        return event

    def unregister(self, gateway_id: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(gateway_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[gateway_id]

    def listening_as(self) -> int | None:
        """Which listening connection is up (None: none): a wait that ends unwoken with the
        same one still up saw every announcement made since it registered."""
        return self.generation if self.listening else None

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Until woken (True) or `timeout_s` (shorter while not listening); then clear."""
        limit = timeout_s if self.listening else min(timeout_s, RECHECK_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, limit))
        woken = event.is_set()
        event.clear()
        return woken

    def _wake(self, gateway_id: str | None) -> None:
        targets = [self._waiters.get(gateway_id, set())] if gateway_id else self._waiters.values()
        for events in targets:
            for event in events:
                event.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="imgcloud-fleet-watch",
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.generation += 1
                    self.listening = True
                    self._wake(None)  # anything stored while not listening: look again
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: waiters re-check meanwhile
                log.warning("fleet rules watch: not listening (%s)", type(exc).__name__)
            self.listening = False  # new waits re-check every RECHECK_S; those waiting
            await asyncio.sleep(RETRY_S)  # now are woken when it listens again


_watch: RulesWatch | None = None


def rules_watch(dsn: str) -> RulesWatch:
    """This process's watch (started by its first waiter)."""
    global _watch
    if _watch is None:
        _watch = RulesWatch(dsn)
    return _watch
