"""Memory soak: central's and an edge's RSS over many authorised gateway requests and many
stored instances (#11). A benchmark, not a test: it prints curves and slopes.

    flock /tmp/imgcloud-stack.lock .venv/bin/python -m bench.soak_bench \
        [--requests 10000] [--instances 10000] [--edge-instances 1000] [--clients 4]

Starts a private stack (var/bench-soak-*), then:
1. requests: QIDO-RS through the gateway with radiologist A's token (nginx asks the indexer,
   then central's Python plugin filters the request), `--clients` in parallel;
2. instances at central: uploads as hospital A's edge makes them (POST /orthanc/instances
   through the gateway with its service account's token), CT studies of 200 instances;
3. instances at an edge: C-STORE (pynetdicom, the modality simulator) to edge A,
   which compresses and forwards each to central. Fewer by default: on 2 cores JPEG-LS
   intake runs at about 12 instances/s.
VmRSS of each Orthanc is read from /proc every 1/20 of a phase. The slope is a least-squares
fit after the first 10 % (warm-up: caches, pools, the allocator's arenas), in KB per
operation. Baseline: Orthanc 1.10.1's Python plugin 4.0 leaked about 5.9 KB per filtered
request (+23 MB per 4,000) - measured on the old platform, which the current plugins cannot
run on (they need Python.AllowThreads, plugin >= 4.3), so it is printed, not rerun.

Status (2026-12-03): not yet a working measurement. Its first full run stalled in phase 1:
after 7 minutes the four client threads sat in poll() with every server process idle, and
the phase had printed nothing. Not diagnosed yet: the gateway's limit_req delays, httpx
pools, and the QIDO path are the suspects. Run it with small N (--requests 200) first.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import down, load_context, up
from deploy.stack.processes import read_pid
from deploy.stack.settings import REPO_ROOT, StackSettings

OLD_PLATFORM_KB_PER_REQUEST = 5.9  # python plugin 4.0, issue #11
FLAT_KB_PER_OP = 1.0  # the verdict's threshold
STUDY_SIZE = 200
SAMPLES = 20
DICOM = {"Content-Type": "application/dicom"}


class Tokens:
    """An access token, fetched again every 2 minutes (they live 5), shared by threads."""

    def __init__(self, fetch: Callable[[], str]) -> None:
        self.fetch, self.lock = fetch, threading.Lock()
        self.value, self.at = "", -1e9

    def __call__(self) -> str:
        with self.lock:
            if time.monotonic() - self.at > 120:
                self.value, self.at = self.fetch(), time.monotonic()
            return self.value

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self()}"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope_kb_per_op(curve: list[tuple[int, float]]) -> float:
    """Least squares of RSS (MB) on operations, after the first 10 %, in KB per operation."""
    last = curve[-1][0]
    points = [(x, y) for x, y in curve if x >= last * 0.1]
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return (sxy / sxx) * 1024 if sxx else 0.0


class Watch:
    """RSS curves of named processes, sampled at operation counts."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.curves: dict[str, list[tuple[int, float]]] = {name: [] for name in pids}
        self.cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}

    def sample(self, ops: int) -> None:
        for name, pid in self.pids.items():
            self.curves[name].append((ops, rss_mb(pid)))

    def report(self, phase: str, ops: int) -> None:
        print(f"\n== {phase}: {ops} operations ==")
        for name, curve in self.curves.items():
            cpu = cpu_s(self.pids[name]) - self.cpu0[name]
            steps = "  ".join(f"{x}:{y:.0f}" for x, y in curve)
            slope = slope_kb_per_op(curve)
            verdict = "flat" if abs(slope) < FLAT_KB_PER_OP else "GROWS"
            print(f"{name:8s} RSS MB by operations: {steps}")
            print(
                f"{name:8s} start {curve[0][1]:.0f} MB, end {curve[-1][1]:.0f} MB, slope "
                f"{slope:+.2f} KB/op after warm-up -> {verdict} (threshold {FLAT_KB_PER_OP} "
                f"KB/op); CPU {cpu:.1f} s, {cpu * 1000 / ops:.2f} ms/op"
            )


def run_parallel(total: int, clients: int, make: Callable[[], httpx.Client],
                 one: Callable[[httpx.Client, int], None], watch: Watch) -> None:  # fmt: skip
    """`total` operations over `clients` threads; RSS sampled every total/SAMPLES."""
    local = threading.local()
    step = max(1, total // SAMPLES)
    watch.sample(0)
    for start in range(0, total, step):
        count = min(step, total - start)

        def op(index: int) -> None:
            if not hasattr(local, "client"):
                local.client = make()
            one(local.client, index)

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(op, range(start, start + count)))
        watch.sample(start + count)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--edge-instances", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    base = REPO_ROOT / "var"
    state = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    settings = StackSettings.from_env(str(state))
    ctx = load_context(settings)
    try:
        up(ctx, say=lambda msg: print(msg, flush=True))
        stack = StackClient.from_file(settings.stack_env)
        pids = {n: read_pid(settings.run_dir, n) for n in ("central", "edge-a")}
        if None in pids.values():
            raise SystemExit(f"no recorded PID for {pids}")
        watch_pids = {n: p for n, p in pids.items() if p is not None}
        user, password = stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
        reader = Tokens(lambda: stack.password_token(user, password)["access_token"])
        edge = Tokens(lambda: stack.gateway_account_token("H0001"))

        # a study to ask for
        uid, files = encoded(70_000)
        with stack.gateway(edge()) as gw:
            for raw in files[:20]:
                gw.post("/orthanc/instances", content=raw, headers=DICOM).raise_for_status()

        watch = Watch(watch_pids)

        def qido(client: httpx.Client, _index: int) -> None:
            client.get(
                f"/dicom-web/studies?StudyInstanceUID={uid}", headers=reader.header()
            ).raise_for_status()

        t0 = time.monotonic()
        run_parallel(args.requests, args.clients, stack.gateway, qido, watch)
        print(f"requests: {args.requests / (time.monotonic() - t0):.0f}/s")
        watch.report("authorised gateway requests (QIDO-RS, radiologist A)", args.requests)

        studies = StudyFiles(71_000)

        def upload(client: httpx.Client, index: int) -> None:
            client.post(
                "/orthanc/instances", content=studies.file(index), headers=DICOM | edge.header()
            ).raise_for_status()

        watch = Watch(watch_pids)
        t0 = time.monotonic()
        run_parallel(args.instances, args.clients, stack.gateway, upload, watch)
        print(f"uploads: {args.instances / (time.monotonic() - t0):.0f} instances/s")
        watch.report("instances stored at central (edge A's uploads)", args.instances)

        if args.edge_instances:
            edge_soak(stack, watch_pids, args.edge_instances)
        print(
            f"\nbaseline (old platform, not rerun): Python plugin 4.0 leaked "
            f"{OLD_PLATFORM_KB_PER_REQUEST} KB per filtered request (+23 MB per 4,000)"
        )
    finally:
        down(ctx, say=lambda _msg: None)
        shutil.rmtree(state, ignore_errors=True)


def edge_soak(stack: StackClient, pids: dict[str, int], total: int) -> None:
    """C-STORE `total` instances to edge A (studies of STUDY_SIZE), then wait for central."""
    from pydicom import dcmread

    watch = Watch(pids)
    watch.sample(0)
    sent, seed, uids = 0, 72_000, []
    while sent < total:
        uid, files = encoded(seed)
        seed += 1
        batch = [dcmread(io.BytesIO(raw)) for raw in files[: total - sent]]
        result = stack.send_to_edge("A", batch)
        if not result.ok:
            raise SystemExit(f"edge A refused {len(result.failed)} instances")
        sent += len(batch)
        uids.append((uid, len(batch)))
        watch.sample(sent)
    deadline = time.monotonic() + 900
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        for uid, count in uids:
            while True:
                study = find_study(central, uid)
                held = len(central.get(f"/studies/{study}/instances").json()) if study else 0
                if held >= count:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"central holds {held} of {count} after 900 s")
                time.sleep(0.5)
    watch.sample(sent)
    watch.report("instances C-STOREd to edge A and forwarded to central", sent)


if __name__ == "__main__":
    main()
