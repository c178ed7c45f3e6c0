"""The edge's forwarding worker: drains the durable queue, one study at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import PluginError
from .forward_queue import ForwardQueue

log = logging.getLogger(__name__)


class QueueWorker:
    """Takes the oldest due study, delivers it, records the outcome; never drops one."""

    def __init__(
        self,
        queue: ForwardQueue,
        deliver: Callable[[str], tuple[int, int]],
        may_forward: Callable[[], bool] = lambda: True,
        is_stable: Callable[[str], bool] = lambda _study_id: True,
    ) -> None:
        self.queue = queue
        self.deliver = deliver
        self.may_forward = may_forward  # the rules' switch and time windows
        self.is_stable = is_stable  # no instance for a while: what is here is the study
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        self._wake.set()

    def run_once(self) -> bool:
        """Deliver one due study if there is one; True if something was attempted."""
        if not self.may_forward():
            return False  # outside the forwarding windows: studies wait, queued
        study_id = self.queue.next_due()
        if study_id is None:
            return False
        self.queue.mark_sending(study_id)
        try:
            stable = self.is_stable(study_id)  # asked first: later arrivals set 'dirty'
            instances, sent = self.deliver(study_id)
        except PluginError as exc:  # central down, refused, unconfirmed: retried later
            delay = self.queue.mark_failed(study_id, str(exc))
            log.warning("study %s not delivered, retry in %.0f s: %s", study_id, delay, exc)
            return True
        self.queue.mark_delivered(study_id, instances, sent, complete=stable)
        log.info(
            "study %s %s: %d instances confirmed by central",
            study_id,
            "delivered" if stable else "partly delivered",
            instances,
        )
        return True

    def run_forever(self, idle_wait_s: float = 1.0) -> None:
        while not self._stopping:
            try:
                busy = self.run_once()
            except Exception:
                log.exception("forwarding worker error")
                busy = False
            if not busy:
                self._wake.wait(idle_wait_s)
                self._wake.clear()

    def start(self) -> threading.Thread:
        self.queue.requeue_partial()
        thread = threading.Thread(target=self.run_forever, name="imgcloud-forwarder", daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def stop(self, join_s: float = 5.0) -> None:
        """Stop after the current step; waits at most `join_s` for it (Orthanc is stopping,
        and the worker may be inside an SDK call)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(join_s)
