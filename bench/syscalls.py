"""Count a process's system calls during some work, with `strace -c` (the durability check).

    counts = count_syscalls(pid, work, ("fsync", "fdatasync", "pwrite64"))

strace slows the traced process down, so figures taken under it are counts, not speeds.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

STRACE = "/usr/bin/strace"
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "msync", "pwrite64")
ATTACH_S = 1.0  # strace attaches to every thread before the work starts
STOP_TIMEOUT_S = 30.0


def parse_summary(text: str) -> dict[str, int]:
    """The calls column of `strace -c` output, by system call name."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(fields) < 5 or not fields[0].replace(".", "", 1).isdigit():
            continue
        name = fields[-1]
        if name == "total":
            continue
        try:
            counts[name] = int(fields[3])
        except ValueError:
            continue
    return counts


def count_syscalls(pid: int, work: Callable[[], object], calls=SYNC_CALLS) -> dict[str, int]:
    """Run work() while strace counts `calls` of every thread of `pid`; calls -> count."""
    with tempfile.TemporaryDirectory(prefix="strace-") as tmp:
        out = Path(tmp) / "summary.txt"
        tracer = subprocess.Popen(
            [STRACE, "-f", "-c", "-o", str(out), "-e", f"trace={','.join(calls)}", "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(ATTACH_S)
            work()
        finally:
            tracer.send_signal(signal.SIGINT)  # strace writes its summary and detaches
            tracer.wait(timeout=STOP_TIMEOUT_S)
        counts = parse_summary(out.read_text())
    return {name: counts.get(name, 0) for name in calls}
