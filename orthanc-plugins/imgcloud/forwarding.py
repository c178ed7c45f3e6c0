"""Forwarding stable studies from an edge to the central archive.

Walking-skeleton version: an in-memory queue with retries and bounded exponential backoff,
drained by one worker thread. The durable, hash-verified queue comes with the edge issue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ForwardingError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    study_id: str
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class StudyForwarder:
    """Queue of Orthanc study IDs, each sent once with `send`, retried until it succeeds."""

    send: Callable[[str], None]
    retry_max_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _queue: deque[_Entry] = field(default_factory=deque)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _stopping: bool = False
    delivered: int = 0
    failures: int = 0

    def enqueue(self, study_id: str) -> None:
        """Add a study unless it is already waiting."""
        with self._lock:
            if any(e.study_id == study_id for e in self._queue):
                return
            self._queue.append(_Entry(study_id))
            self._lock.notify()

    def depth(self) -> int:
        with self._lock:
            return len(self._queue)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the n-th failure: 1, 2, 4, ... capped at retry_max_s."""
        return min(self.retry_max_s, 2.0 ** max(0, attempts - 1))

    def run_once(self) -> bool:
        """Send the first due entry, if any. Returns True if something was attempted."""
        with self._lock:
            now = self.clock()
            entry = next((e for e in self._queue if e.not_before <= now), None)
            if entry is None:
                return False
            self._queue.remove(entry)
        try:
            self.send(entry.study_id)
        except ForwardingError as exc:
            entry.attempts += 1
            entry.not_before = self.clock() + self.backoff(entry.attempts)
            self.failures += 1
            log.warning(
                "forwarding study %s failed (attempt %d): %s", entry.study_id, entry.attempts, exc
            )
            with self._lock:
                self._queue.append(entry)
            return True
        self.delivered += 1
        log.info("study %s forwarded", entry.study_id)
        return True

    def run_forever(self, idle_wait_s: float = 1.0) -> None:
        while not self._stopping:
            if not self.run_once():
                with self._lock:
                    self._lock.wait(timeout=idle_wait_s)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="imgcloud-forwarder", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
