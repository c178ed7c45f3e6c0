"""After the chaos run (bench/chaos.py): what was acknowledged and is or is not at central
or in the indexer, one central node's throughput against two, and each service's memory
and CPU."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import httpx
import pydicom

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.context import StackContext
from deploy.stack.launcher import services

from .chaos_load import INSTITUTION, Tokens, Workload
from .cpu import CLOCK_TICKS, PROC, Group, all_stats

ARRIVAL_TIMEOUT_S = 300.0  # for the edge's queue to drain after the last kill


def account(stack: StackClient, work: Workload) -> tuple[str, dict[str, set[str]]]:
    """The final accounting as text, and per workload the acknowledged writes that are
    missing or duplicated (for the per-kill figures)."""
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        ingest = _studies_at_central(central, list(work.loops["ingest"].acked), per_study=2)
        archive = _instances_at_central(central, list(work.loops["archive"].acked))
    records = _records_kept(stack, list(work.loops["records"].acked))
    text = "\n".join(
        [
            "accounting (acknowledged operations only):",
            f"  ingest:  {ingest[0]}",
            f"  archive: {archive[0]}",
            f"  records: {records[0]}",
        ]
    )
    return text, {"ingest": ingest[1], "archive": archive[1], "records": records[1]}


def _studies_at_central(
    central: httpx.Client, study_uids: list[str], per_study: int
) -> tuple[str, set[str]]:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    counts: dict[str, int] = {}
    pending = list(study_uids)
    while pending and time.monotonic() < deadline:
        still = []
        for uid in pending:
            study_id = find_study(central, uid)
            count = len(central.get(f"/studies/{study_id}/instances").json()) if study_id else 0
            counts[uid] = count
            if count < per_study:
                still.append(uid)
        pending = still
        if pending:
            time.sleep(2.0)
    lost = sum(max(0, per_study - counts.get(u, 0)) for u in study_uids)
    duplicated = sum(max(0, counts.get(u, 0) - per_study) for u in study_uids)
    bad = {u for u in study_uids if counts.get(u, 0) != per_study}
    return (
        f"{len(study_uids)} studies ({len(study_uids) * per_study} instances) sent: "
        f"{lost} instances lost, {duplicated} duplicated"
    ), bad


def _instances_at_central(central: httpx.Client, sop_uids: list[str]) -> tuple[str, set[str]]:
    lost = duplicated = 0
    bad = set()
    for uid in sop_uids:
        answer = central.post("/tools/lookup", content=uid).json()
        found = [i for i in answer if i["Type"] == "Instance"]
        lost += not found
        duplicated += max(0, len(found) - 1)
        if len(found) != 1:
            bad.add(uid)
    return f"{len(sop_uids)} uploads acknowledged: {lost} missing, {duplicated} duplicated", bad


def _records_kept(stack: StackClient, exam_nos: list[str]) -> tuple[str, set[str]]:
    token = Tokens(stack, every_s=60.0).get("ADMIN")
    bad = set()
    with stack.gateway(token) as api:
        for exam_no in exam_nos:
            base = f"/api/v1/institutions/{INSTITUTION}/exams/{exam_no}"
            if api.get(base).status_code != 200 or api.get(f"{base}/report").status_code != 200:
                bad.add(exam_no)
    return f"{len(exam_nos)} exam+report writes acknowledged: {len(bad)} missing", bad


# --- one central node against two ---------------------------------------------------------


def node_throughput(stack: StackClient, seconds: float = 15.0, clients: int = 4) -> str:
    """Instances a second that `clients` uploaders get into central's REST API, all to node
    1, then spread over nodes 1 and 2, in this run (two cores: not twice)."""
    if "CENTRAL_2_ORTHANC_URL" not in stack.env:
        return "one central node against two: the stack runs one node"
    one = _upload_rate(stack, ["CENTRAL_ORTHANC"], seconds, clients, seed=1)
    two = _upload_rate(stack, ["CENTRAL_ORTHANC", "CENTRAL_2_ORTHANC"], seconds, clients, seed=2)
    return (
        f"central ingest, {clients} clients, {seconds:g} s each: one node {one:.1f} inst/s, "
        f"two nodes {two:.1f} inst/s ({two / one:.2f}x)"
        if one
        else "central ingest: no upload succeeded on one node"
    )


def _upload_rate(
    stack: StackClient, nodes: list[str], seconds: float, clients: int, seed: int
) -> float:
    study = make_study(int(time.time()) * 10 + seed, "MR", instances=600)
    bodies = []
    for ds in study.instances():
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        bodies.append(buffer.getvalue())
    done = [0] * clients
    stop = time.monotonic() + seconds

    def upload(k: int) -> None:
        with stack.orthanc(nodes[k % len(nodes)]) as node:
            for i in range(k, len(bodies), clients):
                if time.monotonic() >= stop:
                    return
                if node.post("/instances", content=bodies[i]).status_code == 200:
                    done[k] += 1

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - start)


# --- memory and CPU ------------------------------------------------------------------------


@dataclass
class Resources:
    cpu_s: dict[str, float]
    pss_mb: dict[str, float]
    at: float

    def report(self, before: Resources) -> str:
        span = self.at - before.at
        lines = [f"per service over the run ({span:.0f} s): CPU s (share of one core), PSS now"]
        for name in sorted(self.pss_mb, key=lambda n: -self.pss_mb[n]):
            cpu = max(0.0, self.cpu_s[name] - before.cpu_s.get(name, 0.0))  # 0: restarted
            share = 100 * cpu / span
            lines.append(f"  {name:<20} {cpu:8.1f} s ({share:5.1f} %)  {self.pss_mb[name]:8.0f} MB")
        total_cpu = sum(self.cpu_s.values()) - sum(before.cpu_s.values())
        lines.append(
            f"  {'total':<20} {total_cpu:8.1f} s ({100 * total_cpu / span:5.1f} %)  "
            f"{sum(self.pss_mb.values()):8.0f} MB"
        )
        return "\n".join(lines)


def _pss_kb(pid: int) -> int:
    """The process's proportional set size: shared pages (PostgreSQL's shared buffers, the
    JVM's mapped files) divided among the processes sharing them, so a sum is the memory."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def resources(ctx: StackContext) -> Resources:
    stats = all_stats()
    cpu: dict[str, float] = {}
    pss: dict[str, float] = {}
    groups = []
    for svc in services(ctx):
        pid = svc.pid()
        if pid is not None:
            groups.append(Group(svc.name, roots=frozenset({pid})))
        # Patroni's PostgreSQL runs in a session of its own (the postmaster daemonizes)
        postmaster = getattr(svc, "postmaster_pid", lambda: None)()
        if postmaster is not None:
            groups.append(Group(f"{svc.name}/postgres", roots=frozenset({postmaster})))
    for group in groups:
        members = group.members(stats)
        cpu[group.name] = sum(m.cpu_ticks for m in members) / CLOCK_TICKS
        pss[group.name] = sum(_pss_kb(m.pid) for m in members) / 1024
    return Resources(cpu, pss, time.monotonic())
