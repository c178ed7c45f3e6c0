"""Small attachments in PostgreSQL against the object store, one run (#12).

    STACK_DIR=var/bench-x .venv/bin/python -m bench.small_attachments [--rounds 2]
        [--instances 300] [--clients 4 8]

With a stack running, restarts central with each "SmallAttachments" setting in turn
("object-store": the "DICOM until pixel data" attachment as a second S3 PUT;
"postgresql": a row of imgcloud_small_objects), alternating for --rounds, and on the fair
layout (central alone on CPU 1; SeaweedFS, PostgreSQL and the load clients on CPU 0)
ingests the bench study at each client count, then retrieves it whole by WADO-RS. Per
segment it prints instances/s, CPU ms per instance of central, SeaweedFS, PostgreSQL and
the clients, SeaweedFS's requests per instance (S3 PUTs among them), the WADO-RS rate, and
for "postgresql" the table's size per row (pg_total_relation_size / rows, after the
ingest). Then the medians per setting and their ratios. Central is left running with its
configured setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service, stop_service
from deploy.stack.settings import StackSettings

from .archive_bench import client, delete_study, generate, ingest, retrieve
from .archive_layouts import ingest_groups, measure
from .archive_report import request_line
from .cpu import Pinning, plan_affinity

SETTINGS = ("object-store", "postgresql")
TABLE = "imgcloud_small_objects"


def restart_central(ctx, setting: str | None) -> int:
    """Stop central, start it with ImagingCloud.Storage.SmallAttachments = `setting`
    (None: as configured); its PID once healthy."""
    stop_service(ctx, "central")
    central = service(ctx, "central")
    central.prepare()
    path = central.home / "orthanc.json"  # type: ignore[attr-defined]
    config = json.loads(path.read_text())
    storage = config["ImagingCloud"]["Storage"]
    storage.pop("SmallAttachments", None)
    if setting is not None:
        storage["SmallAttachments"] = setting
    path.write_text(json.dumps(config, indent=2))
    central.start()
    central.wait_healthy(ctx.settings.start_timeout_s)
    central.after_healthy()
    pid = central.pid()
    if pid is None:
        raise SystemExit("central did not start")
    return pid


def table_size(ctx, vacuum: bool = False) -> tuple[int, int, float]:
    """(rows, pg_total_relation_size, mean sealed bytes) of the small-objects table;
    VACUUM first if asked, so that the next ingest reuses the deleted rows' space."""
    dsn = ctx.pg_dsn("orthanc_central", "orthanc_central", "db_central")
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        if vacuum:
            conn.execute(f"VACUUM {TABLE}")
        found = conn.execute(
            f"""SELECT count(*), pg_total_relation_size('{TABLE}'),
                       coalesce(avg(octet_length(sealed)), 0) FROM {TABLE}"""  # noqa: S608
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1]), float(found[2])


def study_metadata_s(url: str, auth: tuple[str, str], ids: dict[str, str]) -> float:
    """Seconds for one WADO-RS study metadata request (a viewer's first call): with the
    metadata cache off, Orthanc reads each instance's "until pixel data" attachment."""
    with client(url, auth) as c:
        started = time.perf_counter()
        response = c.get(
            f"/dicom-web/studies/{ids['study']}/metadata",
            headers={"Accept": "application/dicom+json"},
        )
        response.raise_for_status()
        return time.perf_counter() - started


def segment(ctx, stack, files, ids, setting: str, clients: int, retrievals: int) -> dict:
    """Central restarted with `setting`, pinned fair; one ingest and `retrievals` WADO-RS."""
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    url, metrics = stack["CENTRAL_ORTHANC_URL"], f"{ctx.http('weed_metrics')}/metrics"
    groups = ingest_groups(ctx, central_pid=restart_central(ctx, setting))
    pinning, all_cpus = Pinning(), set(os.sched_getaffinity(0))
    names = [g.name for g in groups]
    pinning.apply(groups, plan_affinity("fair", names, "orthanc", {1}, {0}, all_cpus))
    try:
        rows_before, size_before, _ = table_size(ctx, vacuum=True)
        seconds, entry = measure(
            groups, lambda: ingest(url, auth, files, clients), len(files), metrics_url=metrics
        )
        rows, size, sealed = table_size(ctx)
        rows -= rows_before  # other rows than the bench's (none on a bench stack)
        rates, metadata = [], []
        for _ in range(retrievals):
            pinning.apply(groups, plan_affinity("fair", names, "orthanc", {1}, {0}, all_cpus))
            spent, size_b = retrieve(url, auth, ids)
            rates.append(size_b / spent / 1e6)
            metadata.append(study_metadata_s(url, auth, ids) * 1000)
        delete_study(url, auth, ids["study"])
    finally:
        pinning.restore(groups, all_cpus)
    cpu = {name: g["cpu_ms"] for name, g in entry["groups"].items()}
    written = {name: g["write_kb"] for name, g in entry["groups"].items()}
    puts = entry["requests"].get("SeaweedFS_s3_request_total", {}).get("PUT", 0.0)
    figures: dict[str, Any] = {
        "setting": setting,
        "clients": clients,
        "inst_s": len(files) / seconds,
        "cpu": cpu,
        "written": written,
        "s3_puts": puts,
        "wado_mb_s": statistics.median(rates),
        "metadata_ms": statistics.median(metadata),
        "rows": rows,
        "bytes_per_row": size / rows if rows else 0.0,
        "sealed_b": sealed,
    }
    per_row = (
        f"; table {rows} rows, {size} B ({size / rows:.0f} B/row, empty before: "
        f"{size_before} B), sealed {sealed:.0f} B/row"
        if rows
        else ""
    )
    print(
        f"{setting:<13} {clients} clients {figures['inst_s']:6.1f} inst/s; CPU ms/inst: "
        f"central {cpu['orthanc']:.2f}, SeaweedFS {cpu['seaweedfs']:.2f}, PostgreSQL "
        f"{cpu['postgres']:.2f}, clients {cpu['clients']:.2f}; kB written/inst: SeaweedFS "
        f"{written['seaweedfs']:.0f}, PostgreSQL {written['postgres']:.0f}; "
        f"S3 PUT/inst {puts:.2f}; "
        f"WADO-RS {figures['wado_mb_s']:.0f} MB/s, study metadata "
        f"{figures['metadata_ms']:.0f} ms{per_row}\n    {request_line(entry['requests'])}",
        flush=True,
    )
    return figures


def summary(results: list[dict], clients: list[int], instances_per_day: int) -> None:
    def med(setting: str, n: int | None, pick) -> float:
        chosen = [
            r for r in results if r["setting"] == setting and (n is None or r["clients"] == n)
        ]
        return statistics.median(pick(r) for r in chosen)

    print("\nmedians (fair layout), postgresql / object-store:")
    metrics: list[tuple[str, int | None, Callable[[dict], float]]] = [
        (f"ingest {n} clients, inst/s", n, lambda r: r["inst_s"]) for n in clients
    ]

    def cpu_of(group: str) -> Callable[[dict], float]:
        return lambda r: r["cpu"][group]

    def written_by(group: str) -> Callable[[dict], float]:
        return lambda r: r["written"][group]

    for label, group in (
        ("central", "orthanc"),
        ("SeaweedFS", "seaweedfs"),
        ("PostgreSQL", "postgres"),
        ("clients", "clients"),
    ):
        metrics.append((f"CPU ms/inst {label}", None, cpu_of(group)))
    for label, group in (("SeaweedFS", "seaweedfs"), ("PostgreSQL", "postgres")):
        metrics.append((f"kB written/inst {label}", None, written_by(group)))
    metrics += [
        ("S3 PUTs per instance", None, lambda r: r["s3_puts"]),
        ("whole-study WADO-RS, MB/s", None, lambda r: r["wado_mb_s"]),
        ("study metadata (WADO-RS), ms", None, lambda r: r["metadata_ms"]),
    ]
    for label, n, pick in metrics:
        a, b = med("object-store", n, pick), med("postgresql", n, pick)
        ratio = b / a if a else float("nan")
        print(f"  {label:<28} object-store {a:8.2f}  postgresql {b:8.2f}  ratio {ratio:5.2f}x")
    # the least: the segment whose ingest reused the least leftover space (fixed overhead of
    # a 300-row table, FSM and visibility map forks, still in it)
    per_row = min(r["bytes_per_row"] for r in results if r["setting"] == "postgresql")
    per_day = per_row * instances_per_day
    print(
        f"  {TABLE}: {per_row:.0f} B per row (pg_total_relation_size: heap, TOAST, index); at "
        f"{instances_per_day / 1e6:g} M instances a day {per_day / 1e9:.1f} GB a day, "
        f"{per_day * 365 / 1e12:.2f} TB a year",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.small_attachments", description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--retrievals", type=int, default=3)
    parser.add_argument("--per-day", type=int, default=3_000_000)
    args = parser.parse_args()
    settings = StackSettings.from_env()
    ctx = load_context(settings)
    stack = StackClient.from_file(settings.stack_env)
    files, ids = generate(args.instances, seed=4712)
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    delete_study(stack["CENTRAL_ORTHANC_URL"], auth, ids["study"])
    print(
        f"{args.instances} instances of a CT study, clients {args.clients}, {args.rounds} "
        f"rounds, settings alternating {SETTINGS}; fair layout (central on CPU 1)",
        flush=True,
    )
    started = time.monotonic()
    results = []
    try:
        for _ in range(args.rounds):
            for clients in args.clients:
                for setting in SETTINGS:
                    results.append(
                        segment(ctx, stack, files, ids, setting, clients, args.retrievals)
                    )
    finally:
        restart_central(ctx, None)
    summary(results, args.clients, args.per_day)
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
