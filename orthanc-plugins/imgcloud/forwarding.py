"""The edge's forwarding worker: drains the durable queue, one study at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import PluginError
from .forward_queue import ForwardQueue
from .worker import Worker

log = logging.getLogger(__name__)


class QueueWorker(Worker):
    """Takes the oldest due study, delivers it, records the outcome; never drops one."""

    name = "imgcloud-forwarder"

    def __init__(
        self,
        queue: ForwardQueue,
        deliver: Callable[[str], tuple[int, int]],
        may_forward: Callable[[], bool] = lambda: True,
        is_stable: Callable[[str], bool] = lambda _study_id: True,
    ) -> None:
        super().__init__(every_s=1.0)
        self.queue = queue
        self.deliver = deliver
        self.may_forward = may_forward  # the rules' switch and time windows
        self.is_stable = is_stable  # no instance for a while: what is here is the study

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

    def work(self) -> bool:
        return self.run_once()

    def start(self) -> threading.Thread:
        """Resume what a restart left partial, then run the loop on its own thread."""
        self.queue.requeue_partial()
        return super().start()
