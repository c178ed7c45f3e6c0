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
What is measured, and how a phase runs: bench/soak_watch.py.
Figures of 2026-12-04: bench/results/soak-2026-12-04.txt.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx

from deploy.samples import modality
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study

from .soak_stack import LAST_ORTHANC_1_10_COMMIT, SoakStack, command_name, descendants, pin
from .soak_watch import WATCHED, PhaseResult, Stalled, Watch, run_phase, slope_kb_per_op

ISSUE_KB_PER_REQUEST = 5.9  # issue #11: Python plugin 4.0 on Orthanc 1.10.1, per filtered request
STUDY_SIZE = 200
DICOM = {"Content-Type": "application/dicom"}
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=10.0)
CLIENT_CPU, STACK_CPU = {1}, {0}


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
