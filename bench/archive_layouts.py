"""The archive benchmark's process groups, CPU layouts and cost measurement of one phase."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.stack.launcher import service, services

from .archive_report import OURS, PLAIN, per_instance
from .cpu import Group, Pinning, all_stats, cpu_shares, cpu_times, delta, plan_affinity, usage
from .weed_metrics import per_instance as requests_per_instance
from .weed_metrics import scrape


def ingest_groups(ctx, central_pid: int | None = None, weed_pid: int | None = None) -> list[Group]:
    """The process groups an ingest segment prices: central (or `central_pid`), SeaweedFS
    (or `weed_pid`), PostgreSQL, and this process as the clients; SystemExit if one of
    them is not running."""
    central = central_pid or service(ctx, "central").pid()
    weed = weed_pid or service(ctx, "seaweedfs").pid()
    postgres = service(ctx, "postgres").pid()
    if central is None or weed is None or postgres is None:
        raise SystemExit("central, seaweedfs and postgres must be running")
    return [
        Group("orthanc", roots=frozenset({central})),
        Group("seaweedfs", roots=frozenset({weed})),
        Group("postgres", roots=frozenset({postgres})),
        Group("clients", pids=frozenset({os.getpid()})),
    ]


def bucket_objects(s3, bucket: str) -> tuple[int, int]:
    """(objects, bytes) in the archive's bucket, outside the benchmark's own bench/ prefix."""
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if not item["Key"].startswith("bench/"):
                count, size = count + 1, size + item["Size"]
    return count, size


class Layouts:
    """The process groups of both sides, and the CPU layouts applied to them."""

    def __init__(self, ctx, baseline_pid: int, orthanc_cpus: set[int], rest_cpus: set[int]):
        found = {svc.name: svc.pid() for svc in services(ctx)}
        missing = [name for name, pid in found.items() if pid is None]
        if missing:
            raise SystemExit(f"stack services not running: {', '.join(missing)}")
        pids = {name: pid for name, pid in found.items() if pid is not None}
        # The log filters of Orthanc and nginx run in sessions of their own (processes.spawn).
        log_dir = str(ctx.settings.log_dir)
        filters = frozenset(
            s.pid
            for s in all_stats()
            if (cmd := _cmdline(s.pid)) and "deploy.stack.logredact" in cmd and log_dir in cmd
        )
        others = {p for name, p in pids.items() if name not in ("central", "postgres", "seaweedfs")}
        common = [
            Group("seaweedfs", roots=frozenset({pids["seaweedfs"]})),
            Group("postgres", roots=frozenset({pids["postgres"]})),
            Group("clients", pids=frozenset({os.getpid()})),
        ]
        self.groups = {
            OURS: [
                Group("orthanc", roots=frozenset({pids["central"]})),
                *common,
                Group("others", roots=frozenset(others | {baseline_pid}), pids=filters),
            ],
            PLAIN: [
                Group("orthanc", roots=frozenset({baseline_pid})),
                *common,
                Group("others", roots=frozenset(others | {pids["central"]}), pids=filters),
            ],
        }
        self.orthanc_cpus, self.rest_cpus = orthanc_cpus, rest_cpus
        self.all_cpus = set(os.sched_getaffinity(0))
        self.pinning = Pinning()
        self.metrics_url = f"{ctx.http('weed_metrics')}/metrics"

    def apply(self, layout: str, side: str) -> int:
        groups = self.groups[side]
        plan = plan_affinity(
            layout,
            [g.name for g in groups],
            "orthanc",
            self.orthanc_cpus,
            self.rest_cpus,
            self.all_cpus,
        )
        return self.pinning.apply(groups, plan)

    def restore(self) -> None:
        self.pinning.restore(self.groups[OURS], self.all_cpus)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def measure(
    groups: list[Group], work, instances: int, s3=None, bucket: str = "", metrics_url: str = ""
):
    """Run work(); return (its result, cost per instance of every group and of the bucket,
    and SeaweedFS's requests per instance when its metrics page is given)."""
    before, machine_before = usage(groups), cpu_times()
    objects_before = bucket_objects(s3, bucket) if s3 else (0, 0)
    # Scraped inside the bucket listings, so that their own requests are not counted.
    requests_before = scrape(metrics_url) if metrics_url else {}
    result = work()
    after, machine_after = usage(groups), cpu_times()
    if metrics_url:
        requests = requests_per_instance(scrape(metrics_url), requests_before, instances)
    spent = delta(after, before)
    entry: dict = {
        "groups": per_instance(
            {n: u.cpu_s for n, u in spent.items()},
            {n: u.write_bytes for n, u in spent.items()},
            instances,
        ),
        "cpus": cpu_shares(machine_after, machine_before),
    }
    if metrics_url:
        entry["requests"] = requests
    if s3:
        count, size = bucket_objects(s3, bucket)
        entry["objects"] = (count - objects_before[0]) / instances
        entry["object_kb"] = (size - objects_before[1]) / 1000 / instances
    return result, entry
