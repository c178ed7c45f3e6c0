"""Central archive benchmark: our encrypted S3 storage against plain Orthanc, same run.

    make up && .venv/bin/python -m bench.archive_bench [--instances 300] [--clients 4 8]
    .venv/bin/python -m bench.archive_bench --soak 10000      # memory curve of central

Both Orthancs have central's static configuration on the same PostgreSQL cluster; the
baseline keeps files on local disk with Orthanc's own storage. Reported: ingest
instances/s and MB/s with N parallel clients, whole-study WADO-RS MB/s, single-frame
latency, the ratios, and a breakdown (raw S3 PUT rate, encryption cost per instance).
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
from imgcloud.storage.envelope import seal
from imgcloud.storage.keyring import KeyRing

from deploy.samples.studies import make_study
from deploy.stack.client import ORTHANC_POOL_LIMITS, StackClient
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import StackSettings

from .baseline import start_baseline, stop_baseline


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


def raw_s3_put_rate(stack: StackClient, files: list[bytes], clients: int) -> float:
    """Objects/s of plain PUTs of the same sizes to the same SeaweedFS: the link's ceiling."""
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    prefix = f"bench/{uuid.uuid4()}/"
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(
                    Bucket=stack["S3_BUCKET"], Key=f"{prefix}{i}", Body=files[i]
                ),
                range(len(files)),
            )
        )
    elapsed = time.perf_counter() - started
    for i in range(len(files)):
        s3.delete_object(Bucket=stack["S3_BUCKET"], Key=f"{prefix}{i}")
    return len(files) / elapsed


def seal_cost_ms(files: list[bytes]) -> float:
    ring = KeyRing.generate()
    started = time.perf_counter()
    for raw in files[:50]:
        seal(raw, object_key="00/00/x.1", attachment_type=1, ring=ring)
    return (time.perf_counter() - started) * 1000 / min(50, len(files))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(stack: StackClient, settings: StackSettings, total: int, clients: int) -> None:
    """Ingest `total` instances into central, sampling its resident memory."""
    pid = int((settings.run_dir / "central.pid").read_text())
    url, auth = (
        stack["CENTRAL_ORTHANC_URL"],
        (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"]),
    )
    batch = 250
    files, ids = generate(batch, seed=9000)
    print(f"soak: {total} instances in batches of {batch}, {clients} clients")
    print(f"{'instances':>10} {'central RSS MB':>15} {'inst/s':>8}")
    print(f"{0:>10} {rss_mb(pid):>15.0f}")
    done = 0
    round_no = 0
    while done < total:
        # New UIDs per batch, so every round adds new instances.
        from pydicom import dcmread
        from pydicom.uid import generate_uid

        round_no += 1
        study_uid = generate_uid()
        series_uid = generate_uid()
        renamed = []
        for raw in files:
            ds = dcmread(io.BytesIO(raw))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            renamed.append(buffer.getvalue())
        seconds = ingest(url, auth, renamed, clients)
        done += len(renamed)
        print(f"{done:>10} {rss_mb(pid):>15.0f} {len(renamed) / seconds:>8.1f}", flush=True)
    del ids


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.archive_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2, help="ingest repetitions per side")
    parser.add_argument("--soak", type=int, default=0, help="memory soak: instances to ingest")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    settings = StackSettings.from_env()
    stack = StackClient.from_file(settings.stack_env)
    if args.soak:
        soak(stack, settings, args.soak, max(args.clients))
        return 0

    ours_url = stack["CENTRAL_ORTHANC_URL"]
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    print(f"generating a {args.instances}-slice CT study ...", flush=True)
    files, ids = generate(args.instances, seed=4711)
    megabytes = sum(map(len, files)) / 1e6
    baseline, ctx = start_baseline(settings.state_dir)
    sides = {"plain Orthanc": baseline.url, "encrypted S3": ours_url}
    results: dict[str, dict[str, float]] = {name: {} for name in sides}
    try:
        for clients in args.clients:
            for name, url in sides.items():
                best = float("inf")
                for _ in range(args.rounds):
                    delete_study(url, auth, ids["study"])
                    best = min(best, ingest(url, auth, files, clients))
                results[name][f"ingest_{clients}c_inst_s"] = args.instances / best
                results[name][f"ingest_{clients}c_mb_s"] = megabytes / best
        for name, url in sides.items():
            times = [retrieve(url, auth, ids) for _ in range(3)]
            seconds, size = min(times)
            results[name]["wado_study_mb_s"] = size / 1e6 / seconds
            sops = sop_uids(url, auth, ids, 40)
            frame_latencies(url, auth, ids, sops[:5], 1)  # warm the connection
            lat = frame_latencies(url, auth, ids, sops, 3)
            results[name]["frame_p50_ms"] = statistics.median(lat)
            results[name]["frame_p95_ms"] = statistics.quantiles(lat, n=20)[18]
    finally:
        stop_baseline(baseline, ctx)
    raw_rate = raw_s3_put_rate(stack, files, max(args.clients))
    seal_ms = seal_cost_ms(files)

    print(
        f"\n{args.instances} CT instances, {megabytes:.0f} MB, "
        f"{os.cpu_count()} cores; best of {args.rounds} ingest rounds\n"
    )
    print(f"{'metric':<24} {'plain Orthanc':>14} {'encrypted S3':>14} {'ratio':>7}  target")
    targets = {"ingest": ">= 0.80", "wado_study": ">= 0.80", "frame_p50": "p50 < 100 ms"}
    for metric in results["plain Orthanc"]:
        base, ours = results["plain Orthanc"][metric], results["encrypted S3"][metric]
        higher_better = not metric.endswith("_ms")
        ratio = ours / base if higher_better else base / ours
        target = next((t for k, t in targets.items() if metric.startswith(k)), "")
        print(f"{metric:<24} {base:>14.1f} {ours:>14.1f} {ratio:>6.2f}x  {target}")
    print(
        f"\nbreakdown: raw S3 PUT of the same objects ({max(args.clients)} clients): "
        f"{raw_rate:.0f} objects/s; sealing one instance: {seal_ms:.2f} ms"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "raw_s3_put_per_s": raw_rate, "seal_ms": seal_ms}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
