"""Central's S3 client, boto3 against obstore, in one run (S3.Client of the storage section).

    STACK_DIR=var/bench .venv/bin/python -m bench.s3_clients [--rounds 2] [--clients 4 8]

With a stack running, restarts central with each client in turn (alternating, --rounds
times per client count) and on the fair layout (central alone on CPU 1; SeaweedFS,
PostgreSQL and the load clients, this process, on CPU 0) ingests the bench study, then
retrieves it whole by WADO-RS three times. Per segment: instances/s, CPU ms per instance
of central, SeaweedFS and PostgreSQL, and the best whole-study MB/s with central's CPU
ms per instance retrieved.

Then, in this process, one client operation at a time against the same SeaweedFS (the
micro-benchmark; SeaweedFS and this process on CPU 0): per PUT of an instance-sized and of
a 2 kB body and per GET of each, this process's CPU ms (every thread: obstore works on
threads of its own), SeaweedFS's CPU ms, and the ms per operation a pure-Python thread
alone on CPU 1 could not count while the operations ran (the GIL held or being handed
over). obstore is measured with the payload's SHA-256 in the signature (what it does over
plain HTTP) and with UNSIGNED-PAYLOAD (what both clients do over HTTPS), and the SHA-256
of one body is timed alone. Central is left running with the client it was configured with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from imgcloud.storage.backends import ObjectStore, S3Settings, s3_store
from imgcloud.storage.obstore_store import ObstoreS3Store

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service, stop_service
from deploy.stack.services.central import CentralOrthanc
from deploy.stack.settings import StackSettings

from .archive_bench import delete_study, generate, ingest, retrieve
from .archive_layouts import ingest_groups, measure
from .cpu import Group, Pinning, plan_affinity

CLIENTS = ("boto3", "obstore")


def restart_central(ctx, client: str | None) -> int:
    """Stop central, start it again with S3.Client = `client` (None: as configured); PID."""
    stop_service(ctx, "central")
    central = service(ctx, "central")
    assert isinstance(central, CentralOrthanc)
    central.prepare()
    if client is not None:
        path = central.home / "orthanc.json"
        config = json.loads(path.read_text())
        config["ImagingCloud"]["Storage"]["S3"]["Client"] = client
        path.write_text(json.dumps(config, indent=2))
    central.start()
    central.wait_healthy(ctx.settings.start_timeout_s)
    pid = central.pid()
    if pid is None:
        raise SystemExit("central did not start")
    return pid


def segment(ctx, stack, files, ids, client: str, clients: int) -> dict[str, float]:
    """Central with `client`, fair layout: one ingest and three whole-study retrievals."""
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    url = stack["CENTRAL_ORTHANC_URL"]
    delete_study(url, auth, ids["study"])
    groups = ingest_groups(ctx, central_pid=restart_central(ctx, client))
    all_cpus, pinning = set(os.sched_getaffinity(0)), Pinning()
    names = [g.name for g in groups]
    pinning.apply(groups, plan_affinity("fair", names, "orthanc", {1}, {0}, all_cpus))
    try:
        seconds, entry = measure(groups, lambda: ingest(url, auth, files, clients), len(files))
        pinning.apply(groups, plan_affinity("fair", names, "orthanc", {1}, {0}, all_cpus))
        times, wado = measure(
            groups, lambda: [retrieve(url, auth, ids) for _ in range(3)], 3 * len(files)
        )
    finally:
        pinning.restore(groups, all_cpus)
    cpu = {name: g["cpu_ms"] for name, g in entry["groups"].items()}
    best, size = min(times)
    figures = {
        "inst_s": len(files) / seconds,
        "orthanc_ms": cpu["orthanc"],
        "weed_ms": cpu["seaweedfs"],
        "postgres_ms": cpu["postgres"],
        "wado_mb_s": size / 1e6 / best,
        "wado_orthanc_ms": wado["groups"]["orthanc"]["cpu_ms"],
    }
    print(
        f"{client:<8} {clients} clients: {figures['inst_s']:6.1f} inst/s; CPU ms/inst: "
        f"central {figures['orthanc_ms']:.2f}, SeaweedFS {figures['weed_ms']:.2f}, "
        f"PostgreSQL {figures['postgres_ms']:.2f}; WADO-RS study {figures['wado_mb_s']:.0f} "
        f"MB/s, central {figures['wado_orthanc_ms']:.2f} ms/inst",
        flush=True,
    )
    return figures


# --- micro-benchmark: one operation at a time, in this process -----------------------------


class Spinner:
    """A pure-Python thread counting: what it cannot count is GIL held by other threads."""

    def __init__(self) -> None:
        self.count, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        os.sched_setaffinity(0, {1})  # this thread only (Linux)
        while not self._stop.is_set():
            for _ in range(1000):
                pass
            self.count += 1

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spin_rate(seconds: float = 1.0) -> float:
    with Spinner() as spinner:
        time.sleep(seconds)
    return spinner.count / seconds


def one_at_a_time(ops: list[Callable[[], object]]) -> float:
    started = time.perf_counter()
    for op in ops:
        op()
    return time.perf_counter() - started


def micro_row(
    store: ObjectStore, kind: str, bodies: list[bytes], weed: Group, rate: float
) -> dict[str, dict[str, float]]:
    """CPU ms per operation of this process and of SeaweedFS, and GIL-held ms per op."""
    run = f"bench/{uuid.uuid4()}/"
    keys = [f"{run}{uuid.uuid4()}.1" for _ in bodies]
    me = Group("clients", pids=frozenset({os.getpid()}))
    puts: list[Callable[[], object]] = [
        partial(store.put, k, b) for k, b in zip(keys, bodies, strict=True)
    ]
    gets: list[Callable[[], object]] = [partial(store.get, k) for k in keys]
    out: dict[str, dict[str, float]] = {}
    for name, ops in ((f"PUT {kind}", puts), (f"GET {kind}", gets)):
        _, entry = measure([me, weed], lambda o=ops: one_at_a_time(o), len(ops))
        out[name] = {g: entry["groups"][g]["cpu_ms"] for g in ("clients", "seaweedfs")}
    # The GIL: the same operations again (overwrites and reads) beside the spinner.
    for name, ops in ((f"PUT {kind}", puts), (f"GET {kind}", gets)):
        with Spinner() as spinner:
            wall = one_at_a_time(ops)
        out[name]["gil_ms"] = max(wall - spinner.count / rate, 0.0) * 1000 / len(ops)
        out[name]["wall_ms"] = wall * 1000 / len(ops)
    for key in keys:
        store.delete(key)
    return out


def micro(stack: StackClient, ctx, files: list[bytes]) -> dict[str, dict[str, dict[str, float]]]:
    """Every client on CPU 0 with SeaweedFS; only the spinner on CPU 1, so that what it
    cannot count is time another thread of this process held the GIL."""
    base = S3Settings(
        endpoint=stack["S3_ENDPOINT"],
        region="us-east-1",
        bucket=stack["S3_BUCKET"],
        access_key=stack["S3_ACCESS_KEY"],
        secret_key=stack["S3_SECRET_KEY"],
    )
    via_obstore = S3Settings(**{**vars(base), "client": "obstore"})
    stores: dict[str, ObjectStore] = {
        "boto3": s3_store(base),
        "obstore": s3_store(via_obstore),
        "obstore, unsigned": ObstoreS3Store(via_obstore, unsigned_payload=True, _bench_only=True),
    }
    for store in stores.values():  # connections, credentials and threads ready
        store.put("bench/warm", b"x")
        store.delete("bench/warm")
    weed_pid = service(ctx, "seaweedfs").pid()
    assert weed_pid is not None
    weed = Group("seaweedfs", roots=frozenset({weed_pid}))
    me = Group("clients", pids=frozenset({os.getpid()}))
    all_cpus, pinning = set(os.sched_getaffinity(0)), Pinning()
    pinning.apply([weed, me], {"seaweedfs": {0}, "clients": {0}})
    small = [os.urandom(2048) for _ in files]
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        rate = spin_rate()
        for name, store in stores.items():
            results[name] = micro_row(store, "instance", files, weed, rate)
            results[name] |= micro_row(store, "2 kB", small, weed, rate)
    finally:
        pinning.restore([weed, me], all_cpus)
    return results


def sha256_ms(body: bytes, rounds: int = 200) -> float:
    started = time.process_time()
    for _ in range(rounds):
        hashlib.sha256(body).digest()
    return (time.process_time() - started) * 1000 / rounds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_clients", description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--restart-with", choices=CLIENTS, help="only restart central with this client (tests)"
    )
    args = parser.parse_args()
    settings = StackSettings.from_env()
    ctx = load_context(settings)
    if args.restart_with:
        restart_central(ctx, args.restart_with)
        config = json.loads((CentralOrthanc(ctx).home / "orthanc.json").read_text())
        print("central restarted, S3.Client =", config["ImagingCloud"]["Storage"]["S3"]["Client"])
        return 0
    stack = StackClient.from_file(settings.stack_env)
    files, ids = generate(args.instances, seed=4711)
    mean_kb = sum(map(len, files)) / len(files) / 1000
    print(f"{len(files)} CT instances of {mean_kb:.0f} kB on average; {os.cpu_count()} cores")
    started = time.monotonic()
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for clients in args.clients:
            for _ in range(args.rounds):
                for client in CLIENTS:
                    figures = segment(ctx, stack, files, ids, client, clients)
                    rows.setdefault((client, clients), []).append(figures)
    finally:
        restart_central(ctx, None)
        auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
        delete_study(stack["CENTRAL_ORTHANC_URL"], auth, ids["study"])
    print("\nfair layout, mean of the rounds (obstore / boto3 in brackets)")
    keys = ("inst_s", "orthanc_ms", "weed_ms", "postgres_ms", "wado_mb_s", "wado_orthanc_ms")
    head = "inst/s  central ms  weed ms  pg ms  WADO MB/s  WADO central ms/inst"
    print(f"{'client':<8} {'n':>2}  {head}")
    for clients in args.clients:
        mean = {
            c: {k: sum(r[k] for r in rows[(c, clients)]) / args.rounds for k in keys}
            for c in CLIENTS
        }
        for client in CLIENTS:
            m, ratio = mean[client], {k: mean["obstore"][k] / mean["boto3"][k] for k in keys}
            cells = [
                f"{m[k]:.2f}" + (f" ({ratio[k]:.2f}x)" if client == "obstore" else "") for k in keys
            ]
            print(f"{client:<8} {clients:>2}  " + "  ".join(cells))
    print(
        "\nmicro-benchmark: one operation at a time from this process, with SeaweedFS on CPU 0;"
        "\nGIL ms = what a pure-Python thread alone on CPU 1 could not run, per operation"
        "\n(GIL held, or handed over; wall ms is with that thread running)"
    )
    print("  client             op             client CPU ms  GIL ms  SeaweedFS ms  wall ms")
    for name, ops in micro(stack, ctx, files).items():
        for op, f in ops.items():
            print(
                f"  {name:<18} {op:<14} {f['clients']:13.3f}  {f['gil_ms']:6.3f}  "
                f"{f['seaweedfs']:12.3f}  {f['wall_ms']:7.2f}"
            )
    print(
        f"  SHA-256 of one body alone (hashlib, what SigV4 over plain HTTP adds): instance "
        f"{sha256_ms(files[0]):.3f} ms, 2 kB {sha256_ms(os.urandom(2048)):.4f} ms"
    )
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
