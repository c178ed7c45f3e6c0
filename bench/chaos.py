"""The HA topology under chaos (#14): the redundant stack (IMGCLOUD_TOPOLOGY=ha) runs the
continuous work of bench/chaos_load.py while one part after another is killed with SIGKILL,
then started again, with time to recover between:

    a central Orthanc, an indexer, the PostgreSQL primary (whichever Patroni says leads),
    a SeaweedFS volume server, the raft leader master, an S3 endpoint, a Keycloak node;
    then the gateway is restarted (gracefully: it is one process here, docs/ha.md).

For each it prints what each workload saw (errors, seconds until it worked again), then the
final accounting (instances lost or duplicated at central, records acknowledged then
missing), the yearly downtime those recoveries add up to against H1's 1.6 h, one central
node's throughput against two in the same run, and each service's memory and CPU.

    flock /tmp/imgcloud-stack.lock .venv/bin/python -m bench.chaos [--hold 20] [--settle 20]

It starts the stack on var/chaos (or STACK_DIR) and takes it down at the end (--keep
leaves it running).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from deploy.stack.context import StackContext
from deploy.stack.launcher import (
    down,
    kill_service,
    load_context,
    services,
    start_service,
    stop_service,
    up,
)
from deploy.stack.settings import REPO_ROOT, StackSettings

from .chaos_accounting import account, node_throughput, resources
from .chaos_load import Workload
from .chaos_report import KillResult, budget_lines, effect, losses_per_kill, table

WORKLOADS = ["ingest", "archive", "viewer", "records"]


def service_on(ctx: StackContext, port: int) -> str:
    """The name of the service that listens on `port` (by the ports it declares)."""
    names = {p: n for n, p in ctx.ports.items()}
    for svc in services(ctx):
        if names.get(port) in svc.ports:
            return svc.name
    raise LookupError(f"no service of the stack declares port {port}")


def node_of(ctx: StackContext, prefix: str, index: int = 0) -> str:
    """The `index`-th service whose name starts with `prefix` (a node of that component)."""
    nodes = [svc.name for svc in services(ctx) if svc.name.startswith(prefix)]
    if len(nodes) <= index:
        raise LookupError(f"fewer than {index + 1} services named {prefix}*: {nodes}")
    return nodes[index]


def patroni_leader(ctx: StackContext) -> str:
    """The Patroni node that leads now (its REST API names the cluster's leader)."""
    for name in ("patroni_1_api", "patroni_2_api"):
        try:
            cluster = httpx.get(f"{ctx.http(name)}/cluster", timeout=3).json()
        except httpx.HTTPError:
            continue
        for member in cluster.get("members", []):
            if member.get("role") == "leader":
                port = int(str(member["api_url"]).split(":")[-1].split("/")[0])
                return service_on(ctx, port)
    raise LookupError("no Patroni node answers with a leader")


def raft_leader(ctx: StackContext) -> str:
    """The SeaweedFS master that leads the raft now."""
    for name in ("weed_master", "weed_master_2", "weed_master_3"):
        try:
            status = httpx.get(f"{ctx.http(name)}/cluster/status", timeout=3).json()
        except httpx.HTTPError:
            continue
        leader = status.get("Leader")
        if leader:
            return service_on(ctx, int(str(leader).split(":")[-1].split(".")[0]))
    raise LookupError("no SeaweedFS master names a leader")


@dataclass(frozen=True)
class Target:
    label: str
    component: str
    resolve: Callable[[StackContext], str]


TARGETS = (
    Target("a central Orthanc", "central", lambda ctx: "central"),
    Target("an indexer", "indexer", lambda ctx: node_of(ctx, "indexer", 1)),
    Target("the PostgreSQL primary", "postgresql", patroni_leader),
    Target("a volume server", "seaweedfs", lambda ctx: node_of(ctx, "seaweedfs-volume", 1)),
    Target("the raft leader master", "seaweedfs", raft_leader),
    Target("an S3 endpoint", "seaweedfs", lambda ctx: node_of(ctx, "seaweedfs-s3")),
    Target("a Keycloak node", "keycloak", lambda ctx: node_of(ctx, "keycloak", 1)),
)


def kill_and_recover(
    ctx: StackContext, work: Workload, target: Target, hold_s: float, settle_s: float, say
) -> KillResult:
    name = target.resolve(ctx)
    say(f"kill -9 {target.label} ({name})")
    kill_at = time.monotonic()
    kill_service(ctx, name)  # a Patroni node: its PostgreSQL too
    time.sleep(hold_s)
    say(f"  starting {name} again")
    start_service(ctx, name)
    time.sleep(settle_s)
    end = time.monotonic()
    effects = {w: effect(work.loops[w].between(kill_at, end), kill_at) for w in WORKLOADS}
    return KillResult(f"{target.label} ({name})", target.component, effects, kill_at, end)


def restart_gateway(ctx: StackContext, work: Workload, settle_s: float, say) -> KillResult:
    say("restart the gateway (SIGQUIT, start again)")
    kill_at = time.monotonic()
    stop_service(ctx, "gateway")
    start_service(ctx, "gateway")
    time.sleep(settle_s)
    end = time.monotonic()
    effects = {w: effect(work.loops[w].between(kill_at, end), kill_at) for w in WORKLOADS}
    return KillResult("the gateway, restarted", "gateway", effects, kill_at, end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", type=float, default=20.0, help="s down before the restart")
    parser.add_argument("--settle", type=float, default=20.0, help="s after the restart")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--only", default="", help="comma-separated target components")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    os.environ["IMGCLOUD_TOPOLOGY"] = "ha"
    state = os.environ.get("STACK_DIR") or str(REPO_ROOT / "var" / "chaos")
    ctx = load_context(StackSettings.from_env(state))
    started = time.monotonic()
    up(ctx)
    print(f"HA stack up in {time.monotonic() - started:.0f} s ({len(services(ctx))} services)")
    from deploy.stack.client import StackClient

    stack = StackClient.from_file(ctx.settings.stack_env)
    results: list[KillResult] = []
    try:
        before = resources(ctx)
        work = Workload(stack, seed=int(time.time()) % 100_000)
        work.prepare()
        work.start()
        time.sleep(args.warmup)
        only = {c for c in args.only.split(",") if c}
        for target in TARGETS:
            if not only or target.component in only:
                results.append(kill_and_recover(ctx, work, target, args.hold, args.settle, print))
        if not only or "gateway" in only:
            results.append(restart_gateway(ctx, work, args.settle, print))
        work.stop()
        after = resources(ctx)
        print()
        print(table(results, WORKLOADS))
        print()
        summary, bad = account(stack, work)
        print(summary)
        acked = {name: work.loops[name].acked for name in ("ingest", "archive", "records")}
        print(losses_per_kill(results, acked, bad))
        print(budget_lines(results))
        print()
        print(node_throughput(stack))
        print()
        print(after.report(before))
    finally:
        if not args.keep:
            down(ctx, say=lambda _m: None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
