"""Picklable tasks for the edge's encoder-pool tests (run in its worker processes)."""

from __future__ import annotations

import os
import time


def after(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def die_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(3)


def worker_pid() -> int:
    return os.getpid()
