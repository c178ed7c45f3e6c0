"""The archive benchmark's /proc parsing, process groups and CPU layout plan."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.cpu import (
    CLOCK_TICKS,
    CpuTimes,
    Group,
    Pinning,
    ProcStat,
    Usage,
    cpu_shares,
    delta,
    parse_cpu_times,
    parse_io,
    parse_stat,
    plan_affinity,
    threads,
)

# A /proc/PID/stat line in the kernel's format, its command name holding a space and a ")".
STAT = (
    "4242 (postgres: a) b) S 4100 4100 4100 0 -1 4194560 1200 0 0 0 "
    "37 12 5 3 20 0 1 0 888 200000000 3000 18446744073709551615 1 1 0 0 0 0 0 "
    "16781312 536890886 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_stat_reads_session_and_all_four_cpu_fields() -> None:
    stat = parse_stat(STAT)
    assert (stat.pid, stat.ppid, stat.session) == (4242, 4100, 4100)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (37, 12, 5, 3)
    assert stat.cpu_ticks == 57


def test_parse_stat_of_this_process() -> None:
    from pathlib import Path

    stat = parse_stat(Path("/proc/self/stat").read_text())
    assert stat.pid == os.getpid()
    assert stat.session == os.getsid(0)


def test_parse_io() -> None:
    text = "rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 8192\n"
    io = parse_io(text)
    assert io["write_bytes"] == 8192 and io["wchar"] == 20 and io["syscr"] == 3
    assert parse_io("") == {}


def _stat(pid: int, ppid: int, session: int, ticks: int = 0) -> ProcStat:
    return ProcStat(pid, ppid, session, ticks, 0, 0, 0)


def test_group_members_by_session_descendants_and_pids() -> None:
    stats = [
        _stat(100, 1, 100),  # the service
        _stat(101, 100, 100),  # its child, same session
        _stat(102, 101, 102),  # a grandchild that started a session of its own (sandbox)
        _stat(200, 1, 200),  # another service
        _stat(300, 1, 300),  # a single process added by PID
    ]
    group = Group("orthanc", roots=frozenset({100}), pids=frozenset({300}))
    assert sorted(s.pid for s in group.members(stats)) == [100, 101, 102, 300]


def test_delta_subtracts_counters() -> None:
    before = {"pg": Usage(cpu_s=1.0, write_bytes=100, wchar=5)}
    after = {"pg": Usage(cpu_s=3.5, write_bytes=400, wchar=9), "new": Usage(cpu_s=1)}
    spent = delta(after, before)
    assert list(spent) == ["pg"]
    assert (spent["pg"].cpu_s, spent["pg"].write_bytes, spent["pg"].wchar) == (2.5, 300, 4)
    assert CLOCK_TICKS > 0


NAMES = ["orthanc", "seaweedfs", "postgres", "clients", "others"]


def test_fair_layout_gives_the_orthanc_under_test_its_own_cpu() -> None:
    plan = plan_affinity("fair", NAMES, "orthanc", {1}, {0}, {0, 1})
    assert plan["orthanc"] == {1}
    assert all(plan[name] == {0} for name in NAMES if name != "orthanc")


def test_shared_layout_gives_everything_every_cpu() -> None:
    plan = plan_affinity("shared", NAMES, "orthanc", {1}, {0}, {0, 1})
    assert all(cpus == {0, 1} for cpus in plan.values())


@pytest.mark.parametrize(
    ("layout", "under_test", "orthanc", "rest", "message"),
    [
        ("fair", "orthanc", {0, 1}, {0}, "disjoint"),
        ("fair", "orthanc", {2}, {0}, "not all in"),
        ("fair", "orthanc", {1}, set(), "non-empty"),
        ("fair", "nginx", {1}, {0}, "not among"),
        ("split", "orthanc", {1}, {0}, "unknown layout"),
    ],
)
def test_layout_plan_refuses_nonsense(layout, under_test, orthanc, rest, message) -> None:
    with pytest.raises(ValueError, match=message):
        plan_affinity(layout, NAMES, under_test, orthanc, rest, {0, 1})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pinning_reaches_every_thread_and_restores_the_first_mask() -> None:
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\n"
    code += "print('up', flush=True)\ntime.sleep(30)\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        cpus = sorted(os.sched_getaffinity(0))
        groups = [Group("orthanc", roots=frozenset({child.pid}))]
        pinning = Pinning()
        pinned = pinning.apply(groups, {"orthanc": {cpus[-1]}})
        tids = threads(child.pid)
        assert pinned == len(tids) == 2
        assert all(os.sched_getaffinity(tid) == {cpus[-1]} for tid in tids)
        pinning.restore(groups, set(cpus))
        assert all(os.sched_getaffinity(tid) == set(cpus) for tid in tids)
    finally:
        child.kill()
        child.wait(timeout=10)


PROC_STAT = """cpu  300 0 100 900 20 0 10 30 0 0
cpu0 100 0 50 500 10 0 5 15 0 0
cpu1 200 0 50 400 10 0 5 15 0 0
intr 12345 1 2
ctxt 999
"""


def test_cpu_times_and_shares_per_cpu() -> None:
    before = parse_cpu_times(PROC_STAT)
    assert sorted(before) == [0, 1]
    assert before[0] == CpuTimes(busy=155, idle=500, iowait=10, steal=15)
    later = PROC_STAT.replace("cpu1 200 0 50 400 10 0 5 15", "cpu1 260 0 70 405 15 0 10 20")
    shares = cpu_shares(parse_cpu_times(later), before)
    # cpu1: 100 ticks passed, 85 busy (60 user + 20 system + 5 softirq), 5 iowait, 5 steal
    assert shares[1] == {"busy": 85.0, "iowait": 5.0, "steal": 5.0}
    assert shares[0] == {"busy": 0.0, "iowait": 0.0, "steal": 0.0}
