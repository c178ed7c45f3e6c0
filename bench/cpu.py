"""CPU pinning and per-process accounting for benchmarks, from /proc (Linux only).

The stack starts every service in a session of its own (deploy.stack.processes.spawn), so a
service's processes are those whose session is the service's PID: PostgreSQL's backends,
SeaweedFS's `weed` behind its `unshare` wrapper, Orthanc behind its sandbox. A group is
one or more such sessions, or single processes (the benchmark's own clients).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark needs (CPU in clock ticks)."""

    pid: int
    ppid: int
    session: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def cpu_ticks(self) -> int:
        """All threads, plus children that exited and were waited for."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line; the command name may hold spaces and parentheses."""
    head, tail = text.rsplit(")", 1)
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # fields[0] is field 3 (state) of proc(5): session is 6, utime..cstime are 14..17.
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def parse_io(text: str) -> dict[str, int]:
    """Parse /proc/PID/io ("rchar: 123" lines) into a dict."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def all_stats() -> list[ProcStat]:
    """A stat record for every live process (processes that vanish meanwhile are skipped)."""
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (text := _read(entry / "stat")) is not None:
            out.append(parse_stat(text))
    return out


@dataclass(frozen=True)
class Group:
    """Processes counted together: services (a root PID, its session and all its
    descendants, in case a sandbox starts a session of its own) and/or single PIDs."""

    name: str
    roots: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()

    def members(self, stats: Iterable[ProcStat]) -> list[ProcStat]:
        stats = list(stats)
        parent = {s.pid: s.ppid for s in stats}

        def under_root(pid: int) -> bool:
            seen = 0
            while pid > 1 and seen < 64:
                if pid in self.roots:
                    return True
                pid, seen = parent.get(pid, 0), seen + 1
            return False

        return [
            s for s in stats if s.pid in self.pids or s.session in self.roots or under_root(s.pid)
        ]


@dataclass
class Usage:
    """CPU seconds and bytes written by one group at one moment (cumulative counters)."""

    cpu_s: float = 0.0
    write_bytes: int = 0
    wchar: int = 0
    pids: list[int] = field(default_factory=list)

    def minus(self, earlier: Usage) -> Usage:
        return Usage(
            cpu_s=self.cpu_s - earlier.cpu_s,
            write_bytes=self.write_bytes - earlier.write_bytes,
            wchar=self.wchar - earlier.wchar,
            pids=self.pids,
        )


def usage(groups: Iterable[Group]) -> dict[str, Usage]:
    """Cumulative CPU and I/O of every group now."""
    stats = all_stats()
    out = {}
    for group in groups:
        total = Usage()
        for member in group.members(stats):
            total.cpu_s += member.cpu_ticks / CLOCK_TICKS
            total.pids.append(member.pid)
            io = parse_io(_read(PROC / str(member.pid) / "io") or "")
            total.write_bytes += io.get("write_bytes", 0)
            total.wchar += io.get("wchar", 0)
        out[group.name] = total
    return out


def delta(after: Mapping[str, Usage], before: Mapping[str, Usage]) -> dict[str, Usage]:
    return {name: after[name].minus(before[name]) for name in after if name in before}


# --- affinity ------------------------------------------------------------------------------


def plan_affinity(
    layout: str,
    group_names: Iterable[str],
    under_test: str,
    orthanc_cpus: set[int],
    rest_cpus: set[int],
    all_cpus: set[int],
) -> dict[str, set[int]]:
    """CPUs for each group: "fair" gives the Orthanc under test its own CPUs and every other
    group (including the idle Orthanc) the rest; "shared" lets everything use every CPU."""
    names = list(group_names)
    if under_test not in names:
        raise ValueError(f"group under test {under_test!r} is not among {names}")
    if layout == "shared":
        return {name: set(all_cpus) for name in names}
    if layout != "fair":
        raise ValueError(f"unknown layout {layout!r} (fair or shared)")
    if orthanc_cpus & rest_cpus or not orthanc_cpus or not rest_cpus:
        raise ValueError(f"CPUs {orthanc_cpus} and {rest_cpus} must be disjoint, non-empty")
    if not (orthanc_cpus | rest_cpus) <= all_cpus:
        raise ValueError(f"CPUs {orthanc_cpus | rest_cpus} not all in {all_cpus}")
    return {name: set(orthanc_cpus if name == under_test else rest_cpus) for name in names}


def threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return []


class Pinning:
    """Applies plans thread by thread and remembers each thread's first mask to restore it."""

    def __init__(self) -> None:
        self._original: dict[int, set[int]] = {}

    def apply(self, groups: Iterable[Group], plan: Mapping[str, set[int]]) -> int:
        """Pin every thread of every group's processes; returns the thread count."""
        stats = all_stats()
        count = 0
        for group in groups:
            cpus = plan[group.name]
            for member in group.members(stats):
                for tid in threads(member.pid):
                    try:
                        self._original.setdefault(tid, os.sched_getaffinity(tid))
                        os.sched_setaffinity(tid, cpus)
                    except (ProcessLookupError, FileNotFoundError):
                        continue  # the thread ended meanwhile
                    count += 1
        return count

    def restore(self, groups: Iterable[Group], all_cpus: set[int]) -> None:
        """Threads get their first mask back; threads born while pinned get every CPU."""
        stats = all_stats()
        for group in groups:
            for member in group.members(stats):
                for tid in threads(member.pid):
                    try:
                        os.sched_setaffinity(tid, self._original.get(tid, all_cpus))
                    except (ProcessLookupError, FileNotFoundError):
                        continue


# --- whole-machine view ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """One CPU's line of /proc/stat, in clock ticks."""

    busy: int  # user, nice, system, irq, softirq (guest time is inside user)
    idle: int
    iowait: int
    steal: int

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.iowait + self.steal


def parse_cpu_times(text: str) -> dict[int, CpuTimes]:
    """Per-CPU times from /proc/stat ("cpuN user nice system idle iowait irq softirq steal")."""
    out = {}
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        out[int(name[3:])] = CpuTimes(user + nice + system + irq + softirq, idle, iowait, steal)
    return out


def cpu_times() -> dict[int, CpuTimes]:
    return parse_cpu_times((PROC / "stat").read_text())


def cpu_shares(
    after: Mapping[int, CpuTimes], before: Mapping[int, CpuTimes]
) -> dict[int, dict[str, float]]:
    """Per CPU, the percentage of the interval spent busy, waiting for I/O and stolen by the
    hypervisor: everything on the machine, kernel threads and softirqs included."""
    out = {}
    for cpu, now in after.items():
        then = before[cpu]
        total = (now.total - then.total) or 1
        out[cpu] = {
            "busy": 100 * (now.busy - then.busy) / total,
            "iowait": 100 * (now.iowait - then.iowait) / total,
            "steal": 100 * (now.steal - then.steal) / total,
        }
    return out
