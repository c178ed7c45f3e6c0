"""Where SeaweedFS's CPU goes during central's ingest, and what a setting changes, one run.

    STACK_DIR=var/bench .venv/bin/python -m bench.weed_settings [--rounds 2] [--profile]
        [--variants current leveldb2] [--strace]

With a stack running, restarts the stack's SeaweedFS with each variant in turn (the current
settings, then each candidate, alternating for --rounds) and ingests the bench study into
central on the fair layout (central alone on CPU 1, the rest on CPU 0). Per segment it
prints instances/s, the CPU ms per instance of SeaweedFS and of central, SeaweedFS's
requests per instance (bench.weed_metrics), and SeaweedFS's CPU while the study is deleted
between segments (the DELETEs and any work they trigger). --profile adds one segment with
`-cpuprofile` and prints `go tool pprof -top` of it. --strace adds, per variant, one ingest
with `strace -f -c` on SeaweedFS and prints its fsync/fdatasync/pwrite64 calls per object
(strace slows it down: counts only). SeaweedFS is left running with the current settings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service, stop_service
from deploy.stack.services.seaweedfs import SeaweedFS
from deploy.stack.services.seaweedfs_filer import LEVELDB2, POSTGRES2
from deploy.stack.settings import StackSettings

from .archive_bench import delete_study, generate, ingest
from .archive_layouts import ingest_groups, measure
from .archive_report import request_line
from .cpu import Pinning, plan_affinity
from .syscalls import count_syscalls


@dataclass(frozen=True)
class Variant:
    """`weed server` options, whether the bucket's fs.configure -fsync rule is set, and the
    filer's store (seaweedfs_filer.py)."""

    args: tuple[str, ...] = ()
    fsync: bool = True
    filer_store: str = POSTGRES2


# Candidates a production site could run with, and what each does to durability (see
# docs/archive.md, Benchmark).
VARIANTS: dict[str, Variant] = {
    "current": Variant(),
    # The filer's entries in leveldb2, written without sync (the stack before postgres2),
    # in a folder of the bench's own (not data/filerldb2, which `up` would move).
    "leveldb2": Variant(filer_store=LEVELDB2),
    # The stack before the bucket's fsync rule: S3's 200 meant "in the page cache".
    "no-fsync": Variant(fsync=False),
    # Objects up to 4 kB (the "DICOM until pixel data" attachment) kept in the filer's
    # metadata store instead of a volume needle: one volume write and assign fewer.
    "saveToFilerLimit=4096": Variant(("-filer.saveToFilerLimit=4096",)),
}
BENCH_LEVELDB = "filerldb2-bench"
OBJECTS_PER_INSTANCE = 2  # the instance and its "DICOM until pixel data" attachment


def restart_weed(ctx, variant: Variant) -> int:
    """Stop the stack's SeaweedFS, start it again as `variant` says; its PID."""
    stop_service(ctx, "seaweedfs")
    weed = service(ctx, "seaweedfs")
    assert isinstance(weed, SeaweedFS)
    weed.extra_args = variant.args
    weed.filer_store = variant.filer_store
    weed.leveldb_dir = weed.data_dir / BENCH_LEVELDB
    weed.prepare()
    weed.start()
    weed.wait_healthy(ctx.settings.start_timeout_s)
    weed.after_healthy()  # the bucket, in this store too, and its fsync rule
    if not variant.fsync:
        weed.configure_fsync(False)
    pid = weed.pid()
    if pid is None:
        raise SystemExit("SeaweedFS did not start")
    return pid


def traced(ctx, stack, files, ids, label, variant, clients) -> dict[str, int]:
    """Restart SeaweedFS as `variant`, ingest once under strace; its sync calls."""
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    url = stack["CENTRAL_ORTHANC_URL"]
    pid = restart_weed(ctx, variant)
    counts = count_syscalls(pid, lambda: ingest(url, auth, files, clients))
    delete_study(url, auth, ids["study"])
    objects = len(files) * OBJECTS_PER_INSTANCE
    per_object = ", ".join(f"{name} {n} ({n / objects:.2f}/obj)" for name, n in counts.items())
    print(f"{label:<24} strace, {objects} objects: {per_object}", flush=True)
    return counts


def segment(ctx, stack, files, ids, label, variant, pinning, clients) -> dict:
    """Restart SeaweedFS as `variant`, pin the fair layout, ingest once; the figures."""
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    url, metrics = stack["CENTRAL_ORTHANC_URL"], f"{ctx.http('weed_metrics')}/metrics"
    groups = ingest_groups(ctx, weed_pid=restart_weed(ctx, variant))
    all_cpus = set(os.sched_getaffinity(0))
    names = [g.name for g in groups]
    pinning.apply(groups, plan_affinity("fair", names, "orthanc", {1}, {0}, all_cpus))
    seconds, entry = measure(
        groups, lambda: ingest(url, auth, files, clients), len(files), metrics_url=metrics
    )
    _, removal = measure(
        groups, lambda: delete_study(url, auth, ids["study"]), len(files), metrics_url=metrics
    )
    pinning.restore(groups, all_cpus)
    cpu = {name: g["cpu_ms"] for name, g in entry["groups"].items()}
    figures = {
        "label": label,
        "inst_s": len(files) / seconds,
        "weed_ms": cpu["seaweedfs"],
        "orthanc_ms": cpu["orthanc"],
        "postgres_ms": cpu["postgres"],
        "delete_weed_ms": removal["groups"]["seaweedfs"]["cpu_ms"],
        "requests": request_line(entry["requests"]),
    }
    print(
        f"{label:<24} {figures['inst_s']:6.1f} inst/s; CPU ms/inst: SeaweedFS "
        f"{figures['weed_ms']:.2f}, central {figures['orthanc_ms']:.2f}, PostgreSQL "
        f"{figures['postgres_ms']:.2f}; SeaweedFS during the delete "
        f"{figures['delete_weed_ms']:.2f}\n    {figures['requests']}",
        flush=True,
    )
    return figures


def profile(ctx, stack, files, ids, clients, out: Path) -> None:
    """One ingest of the current settings under -cpuprofile; pprof's top functions."""
    out.unlink(missing_ok=True)
    variant = Variant((f"-cpuprofile={out}",))
    segment(ctx, stack, files, ids, "current, profiled", variant, Pinning(), clients)
    stop_service(ctx, "seaweedfs")  # writes the profile
    go = shutil.which("go") or "/usr/local/go/bin/go"
    weed = str(ctx.settings.venv_bin / "weed")
    for view in (["-top", "-nodecount=25"], ["-top", "-cum", "-nodecount=45"]):
        result = subprocess.run(
            [go, "tool", "pprof", *view, weed, str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        print(result.stdout or result.stderr, flush=True)


def summary(results: list[dict], labels: list[str]) -> None:
    """Each variant's mean over its segments, and its ratio to the first variant's."""
    keys = ("inst_s", "weed_ms", "postgres_ms", "orthanc_ms")
    means = {
        label: {k: sum(r[k] for r in results if r["label"] == label) for k in keys}
        for label in labels
    }
    for label in labels:
        n = sum(1 for r in results if r["label"] == label)
        means[label] = {k: v / n for k, v in means[label].items()}
    base = means[labels[0]]
    print(f"mean over rounds; ratio to {labels[0]} in brackets")
    for label in labels:
        m = means[label]
        cells = ", ".join(f"{k} {m[k]:.2f} ({m[k] / base[k]:.2f}x)" for k in keys)
        print(f"  {label:<22} {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weed_settings", description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args()
    settings = StackSettings.from_env()
    ctx = load_context(settings)
    stack = StackClient.from_file(settings.stack_env)
    files, ids = generate(args.instances, seed=4711)
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    delete_study(stack["CENTRAL_ORTHANC_URL"], auth, ids["study"])
    started = time.monotonic()
    try:
        if args.profile:
            profile(ctx, stack, files, ids, args.clients, ctx.state / "weed-cpu.pprof")
        if args.strace:
            for label in args.variants:
                traced(ctx, stack, files, ids, label, VARIANTS[label], args.clients)
        results = [
            segment(ctx, stack, files, ids, label, VARIANTS[label], Pinning(), args.clients)
            for _ in range(args.rounds)
            for label in args.variants
        ]
        summary(results, args.variants)
    finally:
        restart_weed(ctx, VARIANTS["current"])
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
