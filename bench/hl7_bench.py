"""HL7 v2 intake over MLLP: messages per second and ACK latency (p50, p99) over the plain
loopback listener, with one connection and with several.

Each study is three messages in order (ADT^A01 registration, ORM^O01 order, ORU^R01
final report), each a new record (fresh seeds), each answered AA or the run fails. The
listener is started beside the stack if the launcher does not run it. Fair layout (two
CPUs or more): the listener and the indexer on the first CPU, PostgreSQL and this client
on the second (taskset's affinity, set with sched_setaffinity).

    STACK_DIR=... .venv/bin/python -m deploy.stack up
    STACK_DIR=... .venv/bin/python -m bench.hl7_bench [--studies 400] [--connections 4]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import make_study
from deploy.stack.launcher import load_context
from deploy.stack.processes import read_pid
from deploy.stack.services.hl7 import Hl7Listener
from deploy.stack.settings import StackSettings
from indexer.hl7 import compose
from tests.support.scratch_stack import start, stop_service

A = "H0001"


def messages(seed: int, studies: int) -> list[list[bytes]]:
    """Per study, its three framed messages (in the order a RIS sends them)."""
    out = []
    for n in range(studies):
        study = make_study(seed + n, "CT", instances=1, institution_code=A)
        tag = f"B{seed}-{n}"
        out.append([
            compose.frame(compose.adt(study.patient.mrn, patient_record(study), tag + "a", A)),
            compose.frame(compose.order(study.exam.exam_no, exam_record(study), tag + "o", A)),
            compose.frame(compose.result(study.exam.exam_no, report_record(study), tag + "r", A)),
        ])  # fmt: skip
    return out


def run_connection(port: int, work: list[list[bytes]]) -> list[float]:
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for study in work:
            for framed in study:
                began = time.perf_counter()
                sock.sendall(framed)
                reply = compose.read_reply(sock)
                latencies.append(time.perf_counter() - began)
                code, errors = compose.ack_code(reply)
                if code != "AA":
                    raise SystemExit(f"not accepted: {code} {errors}")
    return latencies


def measure(port: int, work: list[list[bytes]], connections: int) -> str:
    shares = [work[i::connections] for i in range(connections)]
    began = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        results = list(pool.map(lambda share: run_connection(port, share), shares))
    elapsed = time.perf_counter() - began
    latencies = sorted(x for r in results for x in r)
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return (
        f"{connections} connection(s): {len(latencies)} messages in {elapsed:.1f} s = "
        f"{len(latencies) / elapsed:.0f} msg/s; ACK latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


def tree(pid: int) -> list[int]:
    """A process and its descendants (threads follow their process's affinity when set
    per task: every task of each is pinned)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            todo.extend(int(c) for c in children)
    return found


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (ProcessLookupError, PermissionError):
                continue


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=400, help="per run (3 messages each)")
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    ctx = load_context(StackSettings.from_env())
    listener = Hl7Listener(ctx)
    ours = listener.health() is not None  # not running: this bench starts it
    if ours:
        start(listener)
    cpus = os.sched_getaffinity(0)
    fair = len(cpus) >= 2
    first, second = min(cpus), sorted(cpus)[1] if fair else min(cpus)
    try:
        if fair:
            service = [
                p for name in ("hl7", "indexer") if (p := read_pid(ctx.settings.run_dir, name))
            ]
            pin([q for p in service for q in tree(p)], {first})
            postmaster = int((ctx.state / "pg" / "data" / "postmaster.pid").read_text().split()[0])
            pin(tree(postmaster), {second})
            os.sched_setaffinity(0, {second})
        seed = random.SystemRandom().randrange(10_000_000, 90_000_000)
        port = ctx.ports["hl7_mllp_plain"]
        warm = messages(seed, 20)
        run_connection(port, warm)
        one = messages(seed + 1000, args.studies)
        many = messages(seed + 1000 + args.studies, args.studies)
        print(measure(port, one, 1))
        print(measure(port, many, args.connections))
        layout = f"listener + indexer on CPU {first}, PostgreSQL + client on CPU {second}"
        print(f"layout: {layout if fair else 'shared (one CPU)'}; {len(cpus)} CPUs")
    finally:
        os.sched_setaffinity(0, cpus)
        if ours:
            stop_service(listener)


if __name__ == "__main__":
    main()
