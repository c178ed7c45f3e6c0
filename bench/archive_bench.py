"""Central archive benchmark: our encrypted S3 storage against plain Orthanc, same run.

    make up && .venv/bin/python -m bench.archive_bench [--instances 300] [--clients 4 8]
    STACK_DIR=var/bench .venv/bin/python -m bench.archive_bench ...   # another stack
    .venv/bin/python -m bench.archive_bench --soak 10000      # memory curve of central

Both Orthancs have central's static configuration on the same PostgreSQL cluster; the
baseline keeps files on local disk with Orthanc's own storage. Two CPU layouts, in one run:
"fair" gives the Orthanc under test (ours or the plain one, every thread) CPU 1 to itself and
puts SeaweedFS, PostgreSQL, the other services and the load clients (this process) on CPU 0,
as production keeps the object store on machines of its own; "shared" lets everything use
every CPU. Affinity is restored at the end. Reported per layout and side: ingest
instances/s and MB/s with N parallel clients, whole-study WADO-RS MB/s, single-frame
latency, the ratios, and where the time goes: CPU ms and disk kB written per instance of
each process group (/proc/PID/stat and io), and objects written to the bucket per instance.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from imgcloud.storage.backends import S3Settings, S3Store
from imgcloud.storage.envelope import seal
from imgcloud.storage.keyring import KeyRing
from imgcloud.storage.object_keys import object_key

from deploy.samples.studies import make_study
from deploy.stack.client import ORTHANC_POOL_LIMITS, StackClient
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import StackSettings

from .archive_layouts import Layouts, measure
from .archive_report import (
    OURS,
    PLAIN,
    comparison_table,
    cost_table,
    machine_table,
    object_table,
    request_line,
    request_table,
)
from .archive_soak import soak
from .baseline import start_baseline, stop_baseline
from .cpu import Group

LAYOUTS = ("fair", "shared")


def generate(instances: int, seed: int) -> tuple[list[bytes], dict[str, str]]:
    study = make_study(seed, "CT", instances=instances)
    files = []
    for ds in study.instances():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    first = next(study.instances())
    ids = {
        "study": study.exam.study_instance_uid,
        "series": study.exam.series_instance_uid,
        "sop": str(first.SOPInstanceUID),
    }
    return files, ids


def client(url: str, auth: tuple[str, str]) -> httpx.Client:
    return httpx.Client(base_url=url, auth=auth, timeout=120, limits=ORTHANC_POOL_LIMITS)


def ingest(url: str, auth: tuple[str, str], files: list[bytes], clients: int) -> float:
    """Seconds to POST every file with `clients` parallel HTTP clients."""
    local = threading.local()

    def post(raw: bytes) -> None:
        if not hasattr(local, "c"):
            local.c = client(url, auth)
        response = local.c.post("/instances", content=raw)
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(post, files))
    return time.perf_counter() - started


def delete_study(url: str, auth: tuple[str, str], study_uid: str) -> None:
    with client(url, auth) as c:
        for item in c.post("/tools/lookup", content=study_uid).json():
            if item["Type"] == "Study":
                c.delete(f"/studies/{item['ID']}").raise_for_status()


def retrieve(url: str, auth: tuple[str, str], ids: dict[str, str]) -> tuple[float, int]:
    """(seconds, bytes) for one whole-study WADO-RS retrieval."""
    with client(url, auth) as c:
        started = time.perf_counter()
        response = c.get(
            f"/dicom-web/studies/{ids['study']}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        response.raise_for_status()
        return time.perf_counter() - started, len(response.content)


def frame_latencies(
    url: str, auth: tuple[str, str], ids: dict[str, str], sops: list[str], rounds: int
) -> list[float]:
    """Milliseconds for single-frame WADO-RS requests, as a viewer scrolls."""
    out = []
    with client(url, auth) as c:
        for _ in range(rounds):
            for sop in sops:
                started = time.perf_counter()
                response = c.get(
                    f"/dicom-web/studies/{ids['study']}/series/{ids['series']}/instances/"
                    f"{sop}/frames/1",
                    headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                )
                response.raise_for_status()
                out.append((time.perf_counter() - started) * 1000)
    return out


def sop_uids(url: str, auth: tuple[str, str], ids: dict[str, str], count: int) -> list[str]:
    with client(url, auth) as c:
        found = c.get(f"/dicom-web/studies/{ids['study']}/instances").json()
    return [item["00080018"]["Value"][0] for item in found][:count]


def raw_puts(store: S3Store, keys: list[str], bodies: list[bytes], clients: int) -> float:
    """Seconds for PUTs of `bodies` under `keys`, through the plugin's own S3 client."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(store.put, keys, bodies))
    return time.perf_counter() - started


def raw_put_costs(
    stack: StackClient, files: list[bytes], clients: int, groups: list[Group], metrics_url: str
):
    """PUTs/s and CPU ms per PUT of SeaweedFS and of the S3 client (boto3 as the plugin
    configures it, in this process) for instance-sized and 2 kB ("until pixel data") bodies,
    with a flat key layout and with the archive's <u0u1>/<u2u3>/<uuid>.<type> layout."""
    store = S3Store(
        S3Settings(
            endpoint=stack["S3_ENDPOINT"],
            region="us-east-1",
            bucket=stack["S3_BUCKET"],
            access_key=stack["S3_ACCESS_KEY"],
            secret_key=stack["S3_SECRET_KEY"],
        )
    )
    small = [os.urandom(2048) for _ in files]
    out = {}
    for kind, bodies, archive_layout in [
        ("instance, flat keys", files, False),
        ("instance, archive keys", files, True),
        ("2 kB, flat keys", small, False),
        ("2 kB, archive keys", small, True),
    ]:
        run = f"bench/{uuid.uuid4()}/"
        names = [str(uuid.uuid4()) for _ in bodies]
        keys = [object_key(run, u, 1) if archive_layout else f"{run}{u}.1" for u in names]
        seconds, entry = measure(
            groups,
            lambda k=keys, b=bodies: raw_puts(store, k, b, clients),
            len(bodies),
            metrics_url=metrics_url,
        )
        for key in keys:
            store.delete(key)
        cpu = {name: g["cpu_ms"] for name, g in entry["groups"].items()}
        out[kind] = {"puts_per_s": len(bodies) / seconds, **cpu, "requests": entry["requests"]}
    return out


def seal_cost_ms(files: list[bytes]) -> float:
    ring = KeyRing.generate()
    started = time.perf_counter()
    for raw in files[:50]:
        seal(raw, object_key="00/00/x.1", attachment_type=1, ring=ring)
    return (time.perf_counter() - started) * 1000 / min(50, len(files))


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.archive_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2, help="ingest repetitions per side")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--orthanc-cpus", default="1", help="fair layout: the Orthanc's CPUs")
    parser.add_argument("--rest-cpus", default="0", help="fair layout: everything else's")
    parser.add_argument("--soak", type=int, default=0, help="memory soak: instances to ingest")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    settings = StackSettings.from_env()
    stack = StackClient.from_file(settings.stack_env)
    if args.soak:
        soak(stack, settings, args.soak, max(args.clients))
        return 0

    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    bucket = stack["S3_BUCKET"]
    print(f"generating a {args.instances}-slice CT study ...", flush=True)
    files, ids = generate(args.instances, seed=4711)
    n, megabytes = args.instances, sum(map(len, files)) / 1e6
    baseline, ctx = start_baseline(settings.state_dir)
    sides = {PLAIN: baseline.url, OURS: stack["CENTRAL_ORTHANC_URL"]}
    layouts: Layouts | None = None
    try:
        baseline_pid = baseline.pid()
        if baseline_pid is None:
            raise SystemExit("the baseline Orthanc is not running")
        layouts = Layouts(ctx, baseline_pid, _cpus(args.orthanc_cpus), _cpus(args.rest_cpus))
        results: dict[str, dict[str, dict[str, float]]] = {
            lay: {side: {} for side in sides} for lay in args.layouts
        }
        cost: dict = {lay: {side: {} for side in sides} for lay in args.layouts}
        for clients in args.clients:
            for lay in args.layouts:
                for side, url in sides.items():
                    groups, best, best_cost = layouts.groups[side], float("inf"), {}
                    for _ in range(args.rounds):
                        delete_study(url, auth, ids["study"])
                        layouts.apply(lay, side)  # again: threads born since the last round
                        seconds, entry = measure(
                            groups,
                            lambda u=url, c=clients: ingest(u, auth, files, c),
                            n,
                            s3 if side == OURS else None,
                            bucket,
                            layouts.metrics_url,
                        )
                        if seconds < best:
                            best, best_cost = seconds, entry
                    results[lay][side][f"ingest_{clients}c_inst_s"] = n / best
                    results[lay][side][f"ingest_{clients}c_mb_s"] = megabytes / best
                    cost[lay][side][f"ingest {clients}c"] = best_cost
                    print(
                        f"{lay:<6} {side:<14} {clients} clients: {n / best:6.1f} inst/s", flush=True
                    )
        for lay in args.layouts:
            for side, url in sides.items():
                threads = layouts.apply(lay, side)
                times, entry = measure(
                    layouts.groups[side],
                    lambda u=url: [retrieve(u, auth, ids) for _ in range(3)],
                    3 * n,
                    metrics_url=layouts.metrics_url,
                )
                seconds, size = min(times)
                results[lay][side]["wado_study_mb_s"] = size / 1e6 / seconds
                cost[lay][side]["wado study"] = entry
                sops = sop_uids(url, auth, ids, 40)
                frame_latencies(url, auth, ids, sops[:5], 1)  # warm the connection
                lat = frame_latencies(url, auth, ids, sops, 3)
                results[lay][side]["frame_p50_ms"] = statistics.median(lat)
                results[lay][side]["frame_p95_ms"] = statistics.quantiles(lat, n=20)[18]
                print(f"{lay:<6} {side:<14} retrieval done ({threads} threads pinned)", flush=True)
    finally:
        if layouts is not None:
            layouts.restore()
        stop_baseline(baseline, ctx)
    put_groups = [g for g in layouts.groups[OURS] if g.name in ("seaweedfs", "clients")]
    raw = raw_put_costs(stack, files, max(args.clients), put_groups, layouts.metrics_url)
    seal_ms = seal_cost_ms(files)

    print(
        f"\n{n} CT instances, {megabytes:.0f} MB, {os.cpu_count()} cores; best of "
        f"{args.rounds} ingest rounds. Layouts: fair = the Orthanc under test alone on CPU "
        f"{args.orthanc_cpus}, SeaweedFS, PostgreSQL, the other services and the clients on "
        f"CPU {args.rest_cpus}; shared = everything on every CPU.\n"
    )
    print("\n".join(comparison_table(results, args.layouts)))
    print()
    title = "CPU ms per instance (all threads and waited-for children, /proc/PID/stat)"
    print("\n".join(cost_table(cost, args.layouts, "cpu_ms", title)))
    print()
    title = "kB written to disk per instance (/proc/PID/io write_bytes)"
    print("\n".join(cost_table(cost, args.layouts, "write_kb", title)))
    print()
    print("\n".join(object_table(cost, args.layouts)))
    print()
    print("\n".join(request_table(cost, args.layouts)))
    print()
    print("\n".join(machine_table(cost, args.layouts)))
    print(
        f"\nbreakdown (shared layout): PUTs through the plugin's S3 client to the same SeaweedFS, "
        f"{max(args.clients)} clients"
    )
    for kind, figures in raw.items():
        print(
            f"  {kind:<24} {figures['puts_per_s']:6.0f} PUT/s; CPU ms per PUT: "
            f"SeaweedFS {figures['seaweedfs']:.2f}, boto3 client {figures['clients']:.2f}"
        )
        print(f"    per PUT: {request_line(figures['requests'])}")
    print(f"  sealing one instance: {seal_ms:.2f} ms")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": results,
                    "cost": cost,
                    "raw_puts": raw,
                    "seal_ms": seal_ms,
                },
                indent=1,
            )
        )
    return 0


def _cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c.strip()}


if __name__ == "__main__":
    raise SystemExit(main())
