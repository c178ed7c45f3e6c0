"""The plugins' one background-loop base: start, notify, stop (bounded; `stop_all` for
several loops against one deadline), error backoff, and an optional lease for a loop that
several nodes run.

A subclass does one round in `work()` and says whether more is waiting right now: while it
is, the loop goes on at once; otherwise it sleeps `every_s`, or less if `notify()` is
called. A round that raises is logged and the loop backs off (doubling up to
`backoff_max_s`), so a bug or an outage neither ends the thread nor spins it.

An edge is one process per hospital, so its loops run without a lease. A loop that runs on
every central gives a `Lease`: only the node holding it works, the others check again every
`every_s`, and the lease is given up when the loop stops or a round fails.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)


class Lease(Protocol):
    """Who may work among the nodes that run the same loop."""

    def hold(self) -> bool:
        """Take the lease, or confirm it is still ours; False while another node holds it."""
        ...

    def release(self) -> None:
        """Give the lease up (the loop is stopping, or its round failed)."""
        ...


class Worker(ABC):
    """Subclasses set `name` and do one round in `work()`."""

    name = "imgcloud-worker"  # the thread's, and the logs'

    def __init__(
        self, *, every_s: float = 1.0, lease: Lease | None = None, backoff_max_s: float = 60.0
    ) -> None:
        self.every_s = every_s
        self.lease = lease
        self.backoff_max_s = backoff_max_s
        self.failures = 0  # rounds that raised in a row
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def work(self) -> bool:
        """One round; True if more is waiting right now (the loop goes on without a pause)."""

    def start(self) -> threading.Thread:
        """Run the loop on a daemon thread of its own; `stop` bounds the wait for it."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def notify(self) -> None:
        """Something is waiting: look now, not at the next round."""
        self._wake.set()

    def stop(self, join_s: float = 5.0) -> bool:
        """Finish the current round, then end; waits at most `join_s` for it (Orthanc may be
        stopping while the loop is inside an SDK call). False if it is still running."""
        self.ask_to_stop()
        return self.join(join_s)

    def ask_to_stop(self) -> None:
        """Tell the loop to end after its current round, without waiting for it."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float, waited_s: float | None = None) -> bool:
        """Wait for the loop to end after `stop()`; False if it is still running (logged
        as not stopped within `waited_s`, by default `timeout_s`)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            log.error("%s did not stop within %.0f s", self.name, waited_s or timeout_s)
            return False
        return True

    def pause_s(self) -> float:
        """How long to sleep before the next round: `every_s`, longer after failures."""
        if not self.failures:
            return self.every_s
        return min(self.backoff_max_s, max(self.every_s, 0.1) * 2.0 ** (self.failures - 1))

    def _round(self) -> None:
        if self.lease is not None and not self.lease.hold():
            return  # another node works; ours checks again next round
        while self.work() and not self._stop.is_set():
            pass

    def _release(self) -> None:
        if self.lease is None:
            return
        try:
            self.lease.release()
        except Exception:  # the lease goes with its connection anyway
            log.exception("%s: giving the lease up failed", self.name)

    def run_forever(self, idle_wait_s: float | None = None) -> None:
        """The loop itself (`start` runs it on a thread); `idle_wait_s` overrides `every_s`."""
        if idle_wait_s is not None:
            self.every_s = idle_wait_s
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self._round()
                    self.failures = 0
                except Exception:  # a bug must not end the loop: logged, retried later
                    self.failures += 1
                    log.exception("%s error (%d in a row)", self.name, self.failures)
                    self._release()
                if not self._stop.is_set():
                    self._wake.wait(self.pause_s())
        finally:
            self._release()
            log.info("%s stopped", self.name)


def stop_all(workers: Iterable[Worker], join_s: float = 5.0) -> bool:
    """Stop several loops at once: every one is told first, then all are waited for
    against one deadline, so stopping N slow loops takes about one's time, `join_s` at
    most in all (not N times it). False if any is still running."""
    workers = list(workers)
    for worker in workers:
        worker.ask_to_stop()
    deadline = time.monotonic() + join_s
    stopped = [worker.join(max(0.0, deadline - time.monotonic()), join_s) for worker in workers]
    return all(stopped)
