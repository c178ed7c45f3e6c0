"""Series read-ahead of central's archive: study and series retrieval, off vs on vs plain.

    STACK_DIR=var/bench .venv/bin/python -m bench.read_ahead [--instances 300] [--rounds 3]
        [--layouts fair shared] [--depth 8] [--workers 4]

With a stack running: ingests the bench study (bench.archive_bench) into central and into a
plain Orthanc started beside it (bench.baseline), then, alternating for --rounds, restarts
central with ImagingCloud.ReadAhead off, then on, and measures on each CPU layout
(bench.archive_layouts; fair: the Orthanc under test alone on CPU 1) for central and for
the plain Orthanc: whole-study and whole-series WADO-RS MB/s (best of 3 each), single-frame
p50/p95, CPU ms per instance of each process group and SeaweedFS's requests per instance
during the study retrievals, and the read-ahead's counters from /imaging-cloud/status. It
also checks the order in which Orthanc's DICOMweb plugin reads a study (the order of the
multipart parts, each read just before it is sent) against Orthanc's /studies/{id}/instances
(which the read-ahead follows) and against internalid order in its PostgreSQL index.
Central is left running as `up` made it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import httpx
import psycopg
import pydicom

from deploy.stack.client import StackClient, multipart_parts
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.services.central import CentralOrthanc
from deploy.stack.settings import StackSettings

from .archive_bench import client, delete_study, frame_latencies, generate, ingest, sop_uids
from .archive_layouts import Layouts, measure
from .archive_report import OURS, PLAIN, request_line
from .baseline import start_baseline, stop_baseline


class _CentralVariant(CentralOrthanc):
    """Central node 1 with ImagingCloud.ReadAhead as given."""

    def __init__(self, ctx, read_ahead: dict[str, Any]) -> None:
        super().__init__(ctx, 1)
        self.read_ahead = read_ahead

    def runtime_config(self) -> dict[str, Any]:
        config = super().runtime_config()
        config["ImagingCloud"]["ReadAhead"] = self.read_ahead
        return config


def restart_central(ctx, read_ahead: dict[str, Any] | None) -> None:
    """Restart central node 1 with ImagingCloud.ReadAhead = read_ahead (None: as `up`
    starts it, which also rewrites its orthanc.json as the stack's tools expect it)."""
    stop_service(ctx, "central")
    if read_ahead is None:
        start_service(ctx, "central")
        return
    svc = _CentralVariant(ctx, read_ahead)
    svc.prepare()
    svc.start()
    svc.wait_healthy(ctx.settings.start_timeout_s)
    svc.after_healthy()


def wado(url: str, auth, path: str) -> tuple[float, httpx.Response]:
    """(seconds, body) of one WADO-RS retrieval of `path` under /dicom-web."""
    with client(url, auth) as c:
        started = time.perf_counter()
        response = c.get(
            f"/dicom-web/{path}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        response.raise_for_status()
        return time.perf_counter() - started, response


def index_order(ctx, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the study in Orthanc's index order (series, then instance
    internalid), the order the read-ahead fetches in."""
    with psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports["postgres"],
        user="postgres",
        password=ctx.secrets["postgres_superuser"],
        dbname="orthanc_central",
        connect_timeout=5,
    ) as conn:
        rows = conn.execute(
            """SELECT inst.internalid, ser.internalid, tag.value
               FROM resources AS study
               JOIN maindicomtags AS st ON st.id = study.internalid
                    AND st.taggroup = 32 AND st.tagelement = 13 AND st.value = %s
               JOIN resources AS ser ON ser.parentid = study.internalid
               JOIN resources AS inst ON inst.parentid = ser.internalid
               JOIN maindicomtags AS tag ON tag.id = inst.internalid
                    AND tag.taggroup = 8 AND tag.tagelement = 24
               ORDER BY ser.internalid, inst.internalid""",
            (study_uid,),
        ).fetchall()
    return [str(value) for _i, _s, value in rows]


def orthanc_order(url: str, auth, study_uid: str) -> list[str]:
    """SOP Instance UIDs as Orthanc lists the study (/studies/{id}/instances, which
    DICOMweb reads in turn and the read-ahead follows)."""
    with client(url, auth) as c:
        found = c.post("/tools/lookup", content=study_uid).json()
        study = next(item["ID"] for item in found if item["Type"] == "Study")
        listed = c.get(f"/studies/{study}/instances").json()
    return [item["MainDicomTags"]["SOPInstanceUID"] for item in listed]


def read_order(url: str, auth, ids: dict[str, str]) -> list[str]:
    """SOP Instance UIDs in the order DICOMweb sent (and so read) them."""
    _, response = wado(url, auth, f"studies/{ids['study']}")
    return [
        str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID)
        for p in multipart_parts(response)
    ]


def read_ahead_counters(url: str, auth) -> dict[str, Any]:
    with client(url, auth) as c:
        return c.get("/imaging-cloud/status").json().get("read_ahead", {})


def segment(label, url, auth, ids, layouts: Layouts, side, layout, n) -> dict[str, Any]:
    layouts.apply(layout, side)
    before = read_ahead_counters(url, auth) if side == OURS else {}
    study = f"studies/{ids['study']}"
    series = f"{study}/series/{ids['series']}"
    times, entry = measure(
        layouts.groups[side],
        lambda: [wado(url, auth, study) for _ in range(3)],
        3 * n,
        metrics_url=layouts.metrics_url,
    )
    size = len(times[0][1].content)
    series_times = [wado(url, auth, series)[0] for _ in range(3)]
    sops = sop_uids(url, auth, ids, 40)
    frame_latencies(url, auth, ids, sops[:5], 1)  # warm the connection
    lat = frame_latencies(url, auth, ids, sops, 3)
    after = read_ahead_counters(url, auth) if side == OURS else {}
    layouts.restore()
    counters = {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}
    figures = {
        "label": label,
        "layout": layout,
        "study_mb_s": size / 1e6 / min(t for t, _ in times),
        "series_mb_s": size / 1e6 / min(series_times),
        "frame_p50_ms": statistics.median(lat),
        "frame_p95_ms": statistics.quantiles(lat, n=20)[18],
        "cpu_ms": {name: g["cpu_ms"] for name, g in entry["groups"].items()},
        "requests": request_line(entry.get("requests", {})),
        "counters": counters,
        "cpus": {c: round(v["busy"]) for c, v in entry["cpus"].items()},
    }
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in figures["cpu_ms"].items())
    busy = ", ".join(f"CPU {c} {v} %" for c, v in sorted(figures["cpus"].items()))
    ahead = ", ".join(
        f"{k} {counters[k]}"
        for k in ("misses", "hits", "waited", "failed", "prefetched", "dropped", "skipped_full")
        if k in counters
    )
    print(
        f"{layout:<6} {label:<18} study {figures['study_mb_s']:6.1f} MB/s, series "
        f"{figures['series_mb_s']:6.1f} MB/s, frame p50 {figures['frame_p50_ms']:.1f} ms "
        f"p95 {figures['frame_p95_ms']:.1f} ms\n    CPU ms/inst (study retrievals): {cpu}; "
        f"busy: {busy}\n"
        f"    {figures['requests']}" + (f"\n    read-ahead: {ahead}" if ahead else ""),
        flush=True,
    )
    return figures


def summary(results: list[dict[str, Any]], layouts: list[str]) -> None:
    print("\nmedian over rounds (range); ratio = median / median of plain Orthanc")
    for layout in layouts:
        rows = [r for r in results if r["layout"] == layout]
        plain = [r for r in rows if r["label"] == "plain Orthanc"]
        for metric in ("study_mb_s", "series_mb_s", "frame_p50_ms"):
            base = statistics.median(r[metric] for r in plain)
            for label in ("read-ahead off", "read-ahead on", "plain Orthanc"):
                values = [r[metric] for r in rows if r["label"] == label]
                mid = statistics.median(values)
                print(
                    f"{layout:<6} {metric:<13} {label:<15} {mid:7.1f} "
                    f"({min(values):.1f}-{max(values):.1f})  {mid / base:.2f}x"
                )
        for label in ("read-ahead off", "read-ahead on", "plain Orthanc"):
            cpu = [r["cpu_ms"] for r in rows if r["label"] == label]
            line = ", ".join(
                f"{g} {statistics.median(c[g] for c in cpu):.2f}" for g in cpu[0] if g != "others"
            )
            print(f"{layout:<6} CPU ms/inst     {label:<15} {line}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_ahead", description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", default=["fair"], choices=["fair", "shared"])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    settings = StackSettings.from_env()
    ctx = load_context(settings)
    stack = StackClient.from_file(settings.stack_env)
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    ours = stack["CENTRAL_ORTHANC_URL"]
    files, ids = generate(args.instances, seed=4711)
    n, on = args.instances, {"Enabled": True, "Depth": args.depth, "Workers": args.workers}
    variants = {"read-ahead off": {"Enabled": False}, "read-ahead on": on}
    print(f"{n}-slice CT, {sum(map(len, files)) / 1e6:.0f} MB; read-ahead on = {on}", flush=True)
    baseline, _ = start_baseline(settings.state_dir)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for url in (ours, baseline.url):
            delete_study(url, auth, ids["study"])
            ingest(url, auth, files, 4)
        restart_central(ctx, on)
        order = read_order(ours, auth, ids)
        for name, listed in [
            ("Orthanc's /studies/{id}/instances", orthanc_order(ours, auth, ids["study"])),
            ("the index's internalid", index_order(ctx, ids["study"])),
        ]:
            same = "the" if order == listed else "NOT the"
            print(f"read order: DICOMweb read {len(order)} instances in {same} order of {name}")
        for _ in range(args.rounds):
            for label, variant in variants.items():
                restart_central(ctx, variant)
                for layout in args.layouts:
                    layouts = Layouts(ctx, baseline.pid() or 0, {1}, {0})
                    results.append(segment(label, ours, auth, ids, layouts, OURS, layout, n))
            for layout in args.layouts:
                layouts = Layouts(ctx, baseline.pid() or 0, {1}, {0})
                results.append(
                    segment("plain Orthanc", baseline.url, auth, ids, layouts, PLAIN, layout, n)
                )
    finally:
        stop_baseline(baseline, ctx)
        restart_central(ctx, None)
    summary(results, args.layouts)
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
