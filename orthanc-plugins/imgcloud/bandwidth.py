"""Pacing the edge's uploads to a bandwidth limit (the rules' `bandwidth_limit_mbps`).

A hospital shares its uplink with everything else it runs; the edge must not fill it in
working hours. Each upload reserves its share of the link on a virtual timeline and waits
for its slot, so several sender threads together stay under the limit. A short burst
allowance keeps small instances from waiting after an idle period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate_bytes_per_s: Callable[[], float | None],
        *,
        burst_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate_bytes_per_s  # read at each call: the rules can change at runtime
        self.burst_s = burst_s
        self.clock = clock
        self.sleep = sleep
        self._next_free = 0.0
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> float:
        """Wait until `nbytes` may be sent; returns the seconds waited."""
        rate = self.rate()
        if not rate:
            return 0.0
        with self._lock:
            now = self.clock()
            start = max(self._next_free, now - self.burst_s)
            self._next_free = start + nbytes / rate
            wait = start - now
        if wait > 0:
            self.sleep(wait)
            return wait
        return 0.0


def mbps_to_bytes_per_s(mbps: float | None) -> float | None:
    return None if not mbps else mbps * 1_000_000 / 8
