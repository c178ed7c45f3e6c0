"""What the memory soak measures over one phase (bench/soak_bench.py drives the load):
the RSS curve of each watched Orthanc, the CPU of every service and of the client, the
slope of a curve after warm-up, and a phase run on threads with a deadline per sampling
step, so a stall ends the run with its thread stacks printed instead of hanging it.
"""

from __future__ import annotations

import faulthandler
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx

from .soak_stack import cpu_s, descendants, rss_mb

FLAT_KB_PER_OP = 1.0  # the verdict's threshold
STEP_DEADLINE_S = 300.0  # one sampling step of a phase; a stall, not a slow step, exceeds it
WATCHED = ("central", "edge-a")


class Stalled(RuntimeError):
    """A phase's step did not finish within its deadline."""


def slope_kb_per_op(curve: list[tuple[int, float]]) -> float:
    """Least squares of RSS (MB) on operations, after the first 10 %, in KB per operation."""
    last = curve[-1][0]
    points = [(x, y) for x, y in curve if x >= last * 0.1]
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    # fewer than 3 operation counts after warm-up fit no line: NaN, never "flat"
    return (sxy / sxx) * 1024 if len({x for x, _ in points}) >= 3 else math.nan


@dataclass
class PhaseResult:
    platform: str
    phase: str
    ops: int
    seconds: float
    curves: dict[str, list[tuple[int, float]]]
    cpu: dict[str, float]  # service (or "client") -> CPU seconds in the phase


class Watch:
    """RSS curves of the watched Orthancs and CPU of every service, over one phase."""

    def __init__(self, platform: str, services: dict[str, int]) -> None:
        self.platform, self.services = platform, services
        self.curves: dict[str, list[tuple[int, float]]] = {n: [] for n in WATCHED}
        self.cpu0 = self.cpu_now()
        self.t0 = time.monotonic()

    def cpu_now(self) -> dict[str, float]:
        out = {name: cpu_s(descendants(pid)) for name, pid in self.services.items()}
        times = os.times()
        out["client"] = times.user + times.system
        return out

    def sample(self, ops: int) -> None:
        for name in WATCHED:
            self.curves[name].append((ops, rss_mb(self.services[name])))

    def result(self, phase: str, ops: int) -> PhaseResult:
        now = self.cpu_now()
        cpu = {name: now[name] - self.cpu0.get(name, 0.0) for name in now}
        elapsed = time.monotonic() - self.t0
        result = PhaseResult(self.platform, phase, ops, elapsed, self.curves, cpu)
        print_phase(result)
        return result


def print_phase(r: PhaseResult) -> None:
    print(f"\n== {r.platform}: {r.phase}: {r.ops} operations in {r.seconds:.0f} s ==")
    for name, curve in r.curves.items():
        slope = slope_kb_per_op(curve)
        verdict = "flat" if abs(slope) < FLAT_KB_PER_OP else "GROWS"
        verdict = "too few samples (--every)" if math.isnan(slope) else verdict
        print(f"{name:8s} RSS MB by operations: " + "  ".join(f"{x}:{y:.1f}" for x, y in curve))
        print(
            f"{name:8s} start {curve[0][1]:.1f} MB, end {curve[-1][1]:.1f} MB, slope "
            f"{slope:+.2f} KB/op after warm-up -> {verdict} (threshold {FLAT_KB_PER_OP} KB/op)"
        )
    busy = sorted(r.cpu.items(), key=lambda kv: -kv[1])
    print("CPU s (ms/op): " + ", ".join(f"{n} {s:.1f} ({s * 1000 / r.ops:.2f})" for n, s in busy))


def run_phase(total: int, every: int, clients: int, make: Callable[[], httpx.Client],
              one: Callable[[httpx.Client, int], None], watch: Watch) -> None:  # fmt: skip
    """`total` operations on `clients` threads (one HTTP client each, closed at the end);
    RSS sampled every `every`. A step past its deadline raises Stalled."""
    local, made, made_lock = threading.local(), [], threading.Lock()

    def op(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = make()
            with made_lock:
                made.append(local.client)
        one(local.client, index)

    pool = ThreadPoolExecutor(max_workers=clients, thread_name_prefix="soak")
    try:
        watch.sample(0)
        for start in range(0, total, every):
            count = min(every, total - start)
            futures = [pool.submit(op, i) for i in range(start, start + count)]
            done, pending = wait(futures, timeout=STEP_DEADLINE_S)
            if pending:
                faulthandler.dump_traceback(all_threads=True)
                raise Stalled(
                    f"{len(done)} of {count} operations from {start} done after "
                    f"{STEP_DEADLINE_S:.0f} s; thread stacks above"
                )
            for future in done:
                future.result()  # the first failure ends the phase, with its own message
            watch.sample(start + count)
            print(f"  {start + count}/{total}", flush=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for client in made:
            client.close()
