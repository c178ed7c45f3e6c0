"""Memory soak: central's and an edge's RSS over many authorised gateway requests and many
stored instances (#11). A benchmark, not a test: it prints curves, slopes and CPU.

    flock /tmp/imgcloud-stack.lock .venv/bin/python -u -m bench.soak_bench \
        [--requests 10000] [--instances 10000] [--edge-instances 600] [--every 500] \
        [--platforms today,1.10.1]

Each platform is a commit exported from git (HEAD for today, bad4de4 for Orthanc 1.10.1
with Python plugin 4.0, the last commit on Debian 12's packages) started on a fresh state
directory by its own launcher (bench/soak_stack.py); the same load then runs against each:
1. requests: authorised requests through the gateway, in turn a radiologist's series search
   (auth_request to the indexer, then central's DICOMweb), a radiologist's study search
   (the indexer answers it, asking central), and edge A's service account listing its
   pushes (auth_request, then central's Python REST callback); `--clients` in parallel;
2. instances at central: uploads as hospital A's edge makes them (POST /orthanc/instances
   through the gateway with its service account's token; the indexer checks each file and
   passes it to central, whose Python plugin sees it stored), CT studies of 200 instances;
3. instances at an edge: C-STORE to edge A, which compresses and forwards each to central.
VmRSS of central's and edge A's Orthanc is read from /proc every `--every` operations. The
slope is a least-squares fit after the first 10 % (warm-up: caches, pools, the allocator's
arenas), in KB per operation. CPU is per service (its process tree) and for this client.
The load client runs on CPU 1, every process of the stack on CPU 0 (`--no-pin` leaves
both to the scheduler). Every HTTP call has a timeout and every step of a phase a deadline:
a stall ends the run with its thread stacks printed, it never hangs.
Figures of 2026-12-04: bench/results/soak-2026-12-04.txt.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx

from deploy.samples import modality
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study

from .soak_stack import (
    LAST_ORTHANC_1_10_COMMIT,
    SoakStack,
    command_name,
    cpu_s,
    descendants,
    pin,
    rss_mb,
)

ISSUE_KB_PER_REQUEST = 5.9  # issue #11: Python plugin 4.0 on Orthanc 1.10.1, per filtered request
FLAT_KB_PER_OP = 1.0  # the verdict's threshold
STUDY_SIZE = 200
DICOM = {"Content-Type": "application/dicom"}
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=10.0)
STEP_DEADLINE_S = 300.0  # one sampling step of a phase; a stall, not a slow step, exceeds it
WATCHED = ("central", "edge-a")
CLIENT_CPU, STACK_CPU = {1}, {0}


class Stalled(RuntimeError):
    """A phase's step did not finish within its deadline."""


class Tokens:
    """An access token, fetched again every 2 minutes (they live 5), shared by threads."""

    def __init__(self, fetch: Callable[[], str]) -> None:
        self.fetch, self.lock = fetch, threading.Lock()
        self.value, self.at = "", -1e9

    def header(self) -> dict[str, str]:
        with self.lock:
            if time.monotonic() - self.at > 120:
                self.value, self.at = self.fetch(), time.monotonic()
            return {"Authorization": f"Bearer {self.value}"}


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


def encoded(seed: int, institution: str = "H0001") -> tuple[str, list[bytes]]:
    study = make_study(seed, "CT", instances=STUDY_SIZE, institution_code=institution)
    files = []
    for ds in study.instances():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return str(study.exam.study_instance_uid), files


class StudyFiles:
    """Instance `index` of a run of generated CT studies (STUDY_SIZE each), made when first
    asked for; only the current and the previous study are held (10,000 instances would be
    about 5 GB)."""

    def __init__(self, first_seed: int) -> None:
        self.first_seed, self.lock = first_seed, threading.Lock()
        self.held: dict[int, list[bytes]] = {}

    def file(self, index: int) -> bytes:
        number, offset = divmod(index, STUDY_SIZE)
        with self.lock:
            if number not in self.held:
                self.held = {n: f for n, f in self.held.items() if n == number - 1}
                self.held[number] = encoded(self.first_seed + number)[1]
            return self.held[number][offset]


def checked(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:200]}")


def soak(platform: str, stack: StackClient, services: dict[str, int],
         args: argparse.Namespace) -> list[PhaseResult]:  # fmt: skip
    """The three phases against one running stack."""
    user, password = stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    reader = Tokens(lambda: stack.password_token(user, password)["access_token"])
    edge = Tokens(lambda: stack.gateway_account_token("H0001"))

    def gateway() -> httpx.Client:
        client = stack.gateway()
        client.timeout = HTTP_TIMEOUT
        return client

    uid = seed_study(stack, reader, gateway)
    requests = [
        (reader, f"/dicom-web/studies/{uid}/series", "series search"),
        (reader, f"/dicom-web/studies?StudyInstanceUID={uid}", "study search"),
        (edge, "/orthanc/imaging-cloud/pushes?to=H0001", "push list"),
    ]

    def request(client: httpx.Client, index: int) -> None:
        tokens, path, what = requests[index % len(requests)]
        checked(client.get(path, headers=tokens.header()), f"request {index} ({what})")

    results = []
    watch = Watch(platform, services)
    run_phase(args.requests, args.every, args.clients, gateway, request, watch)
    results.append(watch.result("authorised gateway requests", args.requests))

    studies = StudyFiles(71_000)

    def upload(client: httpx.Client, index: int) -> None:
        response = client.post(
            "/orthanc/instances", content=studies.file(index), headers=DICOM | edge.header()
        )
        checked(response, f"upload {index}")

    watch = Watch(platform, services)
    run_phase(args.instances, args.every, args.clients, gateway, upload, watch)
    results.append(watch.result("instances stored at central (edge A's uploads)", args.instances))

    if args.edge_instances:
        results.append(edge_soak(platform, stack, services, args.edge_instances, args.every))
    return results


def seed_study(stack: StackClient, reader: Tokens, gateway: Callable[[], httpx.Client]) -> str:
    """A study of hospital A's sent the real way (C-STORE to edge A, which forwards it and
    records it at the indexer), once radiologist A may read it through the gateway."""
    from pydicom import dcmread

    uid, files = encoded(70_000)
    result = send_to_edge_a(stack, [dcmread(io.BytesIO(raw)) for raw in files[:5]])
    if not result.ok:
        raise RuntimeError(f"edge A refused {len(result.failed)} seed instances")
    deadline, status = time.monotonic() + 300, 0
    with gateway() as gw:
        while time.monotonic() < deadline:
            response = gw.get(f"/dicom-web/studies/{uid}/series", headers=reader.header())
            if (status := response.status_code) == 200:
                return uid
            time.sleep(1)
    raise Stalled(f"the seed study is not readable through the gateway after 300 s: {status}")


def send_to_edge_a(stack: StackClient, datasets: list) -> modality.StoreResult:
    """C-STORE to edge A's plain listener: today's client picks it from keys that the
    1.10.1 stack's stack.env did not have (one DICOM port per edge)."""
    if "EDGE_A_TLS_ONLY_AETS" in stack.env:
        return stack.send_to_edge("A", datasets)
    return modality.send(datasets, host="127.0.0.1", port=int(stack["EDGE_A_DICOM_PORT"]),
                         called_aet=stack["EDGE_A_AET"])  # fmt: skip


def edge_soak(platform: str, stack: StackClient, services: dict[str, int], total: int,
              every: int) -> PhaseResult:  # fmt: skip
    """C-STORE `total` instances to edge A in associations of `every` (or fewer), then wait
    until central holds them all."""
    from pydicom import dcmread

    watch = Watch(platform, services)
    watch.sample(0)
    sent, seed, expected = 0, 72_000, dict[str, int]()
    while sent < total:
        uid, files = encoded(seed)
        seed += 1
        for first in range(0, min(STUDY_SIZE, total - sent), every):
            batch = [dcmread(io.BytesIO(raw)) for raw in files[first : first + every]]
            batch = batch[: total - sent]
            result = send_to_edge_a(stack, batch)
            if not result.ok:
                raise RuntimeError(f"edge A refused {len(result.failed)} instances")
            sent += len(batch)
            expected[uid] = expected.get(uid, 0) + len(batch)
            watch.sample(sent)
            print(f"  {sent}/{total}", flush=True)
    deadline = time.monotonic() + 900
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        central.timeout = HTTP_TIMEOUT
        for uid, want in expected.items():
            while True:
                study = find_study(central, uid)
                held = len(central.get(f"/studies/{study}/instances").json()) if study else 0
                if held >= want:
                    break
                if time.monotonic() > deadline:
                    raise Stalled(f"central holds {held} of {want} of study {uid} after 900 s")
                time.sleep(0.5)
    watch.sample(sent)
    return watch.result("instances C-STOREd to edge A and forwarded to central", sent)


def stop_on_term(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that `finally` stops the stack


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_term)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--edge-instances", type=int, default=600)
    parser.add_argument("--every", type=int, default=500, help="operations per RSS sample")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--platforms", default="today,1.10.1")
    parser.add_argument("--today", default="HEAD", help="the commit measured as today's")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    commits = {"today": args.today, "1.10.1": LAST_ORTHANC_1_10_COMMIT}
    results: list[PhaseResult] = []
    for platform in args.platforms.split(","):
        results += run_platform(platform, commits[platform], args)
    print_summary(results)


def run_platform(platform: str, commit: str, args: argparse.Namespace) -> list[PhaseResult]:
    stack = SoakStack(commit, platform)
    print(f"\n### {platform}: commit {stack.commit[:10]}, state {stack.state}", flush=True)
    os.sched_setaffinity(0, CLIENT_CPU | STACK_CPU)  # the launcher's children: both cores
    ok = False
    try:
        client = stack.up()
        services = stack.services()
        for name in WATCHED:
            if name not in services or command_name(services[name]) != "Orthanc":
                raise RuntimeError(f"{name}: PID {services.get(name)} is not an Orthanc")
        print(f"{platform}: {orthanc_versions(client)}", flush=True)
        if not args.no_pin:
            for pid in services.values():
                pin(descendants(pid), STACK_CPU)
            os.sched_setaffinity(0, CLIENT_CPU)
        out = soak(platform, client, services, args)
        ok = True
        return out
    finally:
        os.sched_setaffinity(0, CLIENT_CPU | STACK_CPU)
        stack.down(keep_state=not ok)
        if not ok:
            print(f"{platform}: failed; its logs are kept in {stack.state / 'log'}")


def orthanc_versions(stack: StackClient) -> str:
    out = []
    for which in ("CENTRAL_ORTHANC", "EDGE_A"):
        with stack.orthanc(which) as orthanc:
            system = orthanc.get("/system").json()
            python = orthanc.get("/plugins/python").json().get("Version", "?")
        out.append(f"{which} Orthanc {system['Version']}, Python plugin {python}")
    return "; ".join(out)


def print_summary(results: list[PhaseResult]) -> None:
    print("\n== summary: RSS of each Orthanc over each phase (MB), slope after warm-up ==")
    print(f"{'platform':8s} {'phase':48s} {'process':8s} {'start':>7s} {'end':>7s} "
          f"{'KB/op':>7s} {'CPU ms/op':>9s}")  # fmt: skip
    for r in results:
        for name, curve in r.curves.items():
            print(
                f"{r.platform:8s} {r.phase:48s} {name:8s} {curve[0][1]:7.1f} "
                f"{curve[-1][1]:7.1f} {slope_kb_per_op(curve):+7.2f} "
                f"{r.cpu.get(name, 0.0) * 1000 / r.ops:9.2f}"
            )
    print(
        f"issue #11's figure (not rerun here): Python plugin 4.0 on Orthanc 1.10.1 leaked "
        f"about {ISSUE_KB_PER_REQUEST} KB per filtered HTTP request (+23 MB per 4,000)"
    )


if __name__ == "__main__":
    main()
