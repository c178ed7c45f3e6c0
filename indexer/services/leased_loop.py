"""The indexer's one background-loop base: start, notify, stop, and a lease when several
nodes run the same loop (`LeasedLoop`); `BackgroundLoop` is the same loop without one.

The lease is a session-level PostgreSQL advisory lock taken on a connection of the loop's
own: PostgreSQL releases it when the process or that connection dies, and another node's
loop takes it on its next round. Only the holder works; the others wait, checking every
`every_s`. `stop()` lets the current batch finish; `join()` waits for that, bounded.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


class BackgroundLoop:
    """A loop on a thread of its own: subclasses name it and do one batch in `work()`.

    Without a lease: for work that is safe on every node at once (rows taken with
    `FOR UPDATE SKIP LOCKED`), or that only one process runs."""

    name: str  # for the logs and the thread

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def work(self) -> bool:
        """One batch, in its own transaction(s); True if more is waiting right now."""
        raise NotImplementedError

    def start(self) -> threading.Thread:
        """Run the loop on a thread of its own (a daemon: `join` bounds the wait for it)."""
        self._thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def notify(self) -> None:
        """Something is waiting: look now, not at the next round."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current batch, then end (signal-handler safe: it does not wait)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the loop to end after `stop()`; False if it is still running."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("%s did not stop within %.0f s", self.name, timeout_s)
            return False
        return True

    def _round(self) -> None:
        while not self._stop.is_set() and self.work():
            pass

    def _end(self) -> None:
        """When the loop ends, whatever way."""

    def run_forever(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self._round()
                except Exception:  # a bug must not end the loop: logged, retried next round
                    log.exception("%s error", self.name)
                self._wake.wait(self.every_s)
        finally:
            self._end()
            log.info("%s stopped", self.name)


class LeasedLoop(BackgroundLoop):
    """Subclasses name the lock and the loop, and do one batch in `work()`."""

    lock_id: int  # the advisory lock: one per kind of loop, the same on every node
    application_name: str  # the lease connection's, to find it in pg_stat_activity

    def __init__(self, engine: Engine, every_s: float = 1.0) -> None:
        super().__init__(every_s)
        self.engine = engine
        self.working = False  # holds the lease now
        self._lease: Connection | None = None

    def _take_lease(self, lease: Connection) -> None:
        if not self.working:
            self.working = bool(
                lease.execute(text(f"SELECT pg_try_advisory_lock({int(self.lock_id)})")).scalar()
            )
            if self.working:
                log.info("%s: holding the lease, working", self.name)
        else:
            lease.execute(text("SELECT 1"))  # still ours while this answers

    def _round(self) -> None:
        try:
            if self._lease is None:
                self._lease = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                self._lease.execute(
                    text("SELECT set_config('application_name', :name, false)"),
                    {"name": self.application_name},
                )
            self._take_lease(self._lease)
            if self.working:
                super()._round()
        except DBAPIError:
            log.exception("%s: database error, the lease is given up", self.name)
            self._end()

    def _end(self) -> None:
        self.working = False
        if self._lease is not None:  # closed for good (not back to the pool): the lease goes
            self._lease.invalidate()
            self._lease.close()
        self._lease = None
