"""Wait for something the system does in the background (a flush, a forward, a reload).

One helper instead of hand-written polling loops and bare sleeps: it returns as soon as the
condition holds, and when it never does it fails with a message that names what was awaited
and what was last seen, so a slow run and a broken one read differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    fn: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
) -> T:
    """Call `fn` until it returns a truthy value without raising, and return that value.

    An exception from `fn` (a failed assert, a refused connection) counts as "not yet".
    After `timeout` seconds fails with AssertionError naming `what` and the last value or
    exception (chained, so its traceback is kept).
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        last_error: Exception | None = None
        try:
            value = fn()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            seen = (
                f"last error: {type(last_error).__name__}: {last_error}"
                if last_error is not None
                else f"last value: {value!r}"
            )
            message = f"{what}: not within {timeout:g} s ({attempts} tries; {seen[:500]})"
            raise AssertionError(message) from last_error
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
