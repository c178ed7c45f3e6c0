"""The HA topology's SeaweedFS cluster (3 masters, 3 volume servers, 2 filers, 2 S3 nodes)
loses no acknowledged object and takes writes again when a volume server, the raft leader
master or an S3 node is killed with SIGKILL under a continuous load of PUTs and GETs.

A PostgreSQL of its own (the filers' store) and the cluster's services, in a scratch state
directory on free ports: run it under the stack lock. Each recovery time is printed (-s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from deploy.stack.context import S3_BUCKET, StackContext
from deploy.stack.launcher import load_context
from deploy.stack.processes import stop
from deploy.stack.services.base import Service, http_health
from deploy.stack.services.postgres import Postgres
from deploy.stack.services.seaweedfs_cluster import (
    MASTER_NODES,
    WeedMaster,
    WeedNode,
    WeedS3Node,
    WeedVolume,
    address,
    master_status,
    port_name,
    raft_leader,
    seaweedfs_ha_services,
)
from deploy.stack.settings import StackSettings

from ..support.scratch_stack import scratch_state, start, start_all, stop_service

pytestmark = pytest.mark.integration

# How long the load may take to write again after a kill before the test fails.
RECOVERY_BOUND_S = 60.0
# Writes in a row that count as "writes work again".
STEADY_WRITES = 10
OBJECT_BYTES = 4096
# The load's S3 client gives up on a request after this long (and sends the next), as a
# client with retries does: a PUT in flight when the leader master dies hangs until then.
LOAD_TIMEOUT_S = 3
# How long the load is watched after a killed master is back.
REJOIN_WATCH_S = 15


def load_client(node: WeedS3Node):
    return boto3.client(
        "s3",
        endpoint_url=node.endpoint,
        aws_access_key_id=node.ctx.secrets["s3_access_key"],
        aws_secret_access_key=node.ctx.secrets["s3_secret_key"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=LOAD_TIMEOUT_S,
            read_timeout=LOAD_TIMEOUT_S,
            retries={"max_attempts": 1},
        ),
    )


@dataclass
class Load:
    """PUTs of fresh objects, each followed by a GET of a random acknowledged one, through
    the S3 nodes in `targets` in turn, on a thread of its own."""

    ctx: StackContext
    targets: list[WeedS3Node]
    acked: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the body
    # (monotonic end time, "put"/"get", ok, error name or "")
    events: list[tuple[float, str, bool, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        clients = {node.node: load_client(node) for node in self.targets}
        seq = 0
        while not self.stopping.is_set():
            with self.lock:
                targets = list(self.targets)
            node = targets[seq % len(targets)]
            client = clients.setdefault(node.node, load_client(node))
            key, body = f"ha/{seq:06d}-{secrets.token_hex(4)}", secrets.token_bytes(OBJECT_BYTES)
            seq += 1
            ok, error = self._put(client, key, body)
            self._record("put", ok, error)
            if ok:
                with self.lock:
                    self.acked[key] = hashlib.sha256(body).hexdigest()
            else:
                time.sleep(0.2)
                continue
            with self.lock:
                some = secrets.choice(list(self.acked))
                digest = self.acked[some]
            ok, error = self._get(client, some, digest)
            self._record("get", ok, error)

    @staticmethod
    def _put(client, key: str, body: bytes) -> tuple[bool, str]:
        try:
            client.put_object(Bucket=S3_BUCKET, Key=key, Body=body)
        except (BotoCoreError, ClientError) as exc:
            return False, type(exc).__name__
        return True, ""

    @staticmethod
    def _get(client, key: str, digest: str) -> tuple[bool, str]:
        try:
            body = client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            return False, type(exc).__name__
        return (True, "") if hashlib.sha256(body).hexdigest() == digest else (False, "wrong body")

    def _record(self, op: str, ok: bool, error: str) -> None:
        with self.lock:
            self.events.append((time.monotonic(), op, ok, error))

    def use(self, targets: list[WeedS3Node]) -> None:
        with self.lock:
            self.targets = targets

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.acked)

    def recovered_at(self, since: float, op: str = "put") -> float | None:
        """When the first of STEADY_WRITES successes in a row of `op` after `since` ended."""
        with self.lock:
            events = [e for e in self.events if e[0] > since and e[1] == op]
        run_start = None
        streak = 0
        for at, _, ok, _ in events:
            if ok:
                run_start = at if streak == 0 else run_start
                streak += 1
                if streak >= STEADY_WRITES:
                    return run_start
            else:
                streak = 0
        return None

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time between acknowledged PUTs in (since, until]."""
        with self.lock:
            acked = [e[0] for e in self.events if since < e[0] <= until and e[1] == "put" and e[2]]
        marks = [since, *acked, until]
        return max(b - a for a, b in itertools.pairwise(marks))

    def errors_since(self, since: float, until: float) -> dict[str, int]:
        with self.lock:
            failed = [e for e in self.events if since < e[0] <= until and not e[2]]
        counts: dict[str, int] = {}
        for _, op, _, error in failed:
            counts[f"{op} {error}"] = counts.get(f"{op} {error}", 0) + 1
        return counts


def kill9(svc: Service) -> None:
    assert stop(svc.ctx.settings.run_dir, svc.name, sig=signal.SIGKILL, timeout_s=10)


def restart(svc: Service) -> float:
    began = time.monotonic()
    start(svc)
    return time.monotonic() - began


def wait_recovered(load: Load, since: float, what: str) -> float:
    deadline = since + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        at = load.recovered_at(since)
        if at is not None:
            errors = load.errors_since(since, at)
            print(f"  {what}: writes again after {at - since:.1f} s; errors meanwhile {errors}")
            return at - since
        time.sleep(0.5)
    raise AssertionError(f"{what}: no {STEADY_WRITES} writes in a row within {RECOVERY_BOUND_S} s")


def rss_mb(svcs: list[Service]) -> str:
    """Each kind's resident memory in MB, summed over its nodes, and the total."""
    sizes: dict[str, float] = {}
    for svc in svcs:
        pid = svc.pid()
        if pid is None or not isinstance(svc, WeedNode):
            continue
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes[svc.kind] = sizes.get(svc.kind, 0.0) + int(line.split()[1]) / 1024
    total = sum(sizes.values())
    return ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()) + f"; total {total:.0f}"


def new_leader_after(ctx: StackContext, old: int, since: float) -> float:
    """Seconds from `since` until a master other than `old` says it leads."""
    while time.monotonic() < since + RECOVERY_BOUND_S:
        if raft_leader(ctx) not in (None, old):
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"no new leader within {RECOVERY_BOUND_S} s")


def unreadable(node: WeedS3Node, objects: dict[str, str], tries: int = 3) -> list[str]:
    """Keys that do not read back with their body through `node` (each tried `tries`
    times, a second apart: a read may meet the dead server's copy first)."""
    client = node.client()
    missing = []
    for key, digest in objects.items():
        for attempt in range(tries):
            try:
                body = client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
            except (BotoCoreError, ClientError):
                body = b""
            if hashlib.sha256(body).hexdigest() == digest:
                break
            if attempt + 1 < tries:
                time.sleep(1.0)
        else:
            missing.append(key)
    return missing


@pytest.fixture
def cluster() -> Iterator[tuple[StackContext, list[Service]]]:
    with scratch_state("test-weed-ha-") as state:
        settings = dataclasses.replace(StackSettings.from_env(str(state)), topology="ha")
        ctx = load_context(settings)
        svcs = seaweedfs_ha_services(ctx)
        postgres = Postgres(ctx)
        try:
            start(postgres)
            began = time.monotonic()
            start_all(svcs, settings.start_timeout_s)
            print(f"\n  cluster of {len(svcs)} healthy in {time.monotonic() - began:.1f} s")
            yield ctx, svcs
        finally:
            for svc in reversed(svcs):
                stop_service(svc)
            stop_service(postgres)


def by_name(svcs: list[Service], cls: type[WeedNode], node: int) -> WeedNode:
    found = [s for s in svcs if isinstance(s, cls) and s.node == node]
    assert len(found) == 1
    return found[0]


def leader_master(svcs: list[Service]) -> WeedMaster:
    """The master that says it leads (its /cluster/status)."""
    ctx = svcs[0].ctx
    node = raft_leader(ctx)
    assert node is not None, "no master says it leads"
    master = by_name(svcs, WeedMaster, node)
    assert isinstance(master, WeedMaster)
    statuses = [master_status(ctx, n) for n in MASTER_NODES]
    leaders = {status.get("Leader") for status in statuses if status is not None}
    assert leaders == {address(ctx, port_name("master", node))}, leaders  # the live agree
    return master


def test_no_acknowledged_object_is_lost_and_writes_go_on_after_each_kill(cluster) -> None:
    ctx, svcs = cluster
    for n in MASTER_NODES:  # -disableHttp: /dir/assign would hand out write JWTs
        response = httpx.get(f"{ctx.http(port_name('master', n))}/dir/assign", timeout=3)
        assert '"fid"' not in response.text and response.status_code != 200, n
    s3_1, s3_2 = (by_name(svcs, WeedS3Node, n) for n in (1, 2))
    assert isinstance(s3_1, WeedS3Node) and isinstance(s3_2, WeedS3Node)
    # what the proxy in front of the S3 nodes can check without credentials
    assert [http_health(f"{n.endpoint}/healthz") for n in (s3_1, s3_2)] == [None, None]
    load = Load(ctx, [s3_1, s3_2])
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    recovery: dict[str, float] = {}
    try:
        time.sleep(8)
        assert load.recovered_at(0.0) is not None, load.errors_since(0.0, time.monotonic())

        # 1. a volume server
        volume = by_name(svcs, WeedVolume, 2)
        before = load.snapshot()
        killed = time.monotonic()
        kill9(volume)
        recovery["volume server"] = wait_recovered(load, killed, "volume server 2 killed")
        lost = unreadable(s3_1, before)
        print(f"  volume server 2 down: {len(lost)} of {len(before)} objects unreadable")
        assert lost == []
        print(f"  volume server 2 back in {restart(volume):.1f} s")

        # 2. the raft leader master
        old = leader_master(svcs)
        before = load.snapshot()
        killed = time.monotonic()
        kill9(old)
        elected = new_leader_after(ctx, old.node, killed)
        recovery["leader master"] = wait_recovered(load, killed, f"leader {old.name} killed")
        new = leader_master(svcs)
        assert new.node != old.node
        print(f"  {new.name} leads after {elected:.1f} s; {old.name} back in {restart(old):.1f} s")
        # a master that rejoins may call an election of its own: do writes pause again?
        rejoined = time.monotonic()
        time.sleep(REJOIN_WATCH_S)
        gap = load.longest_gap(rejoined, time.monotonic())
        recovery["master rejoin (longest pause)"] = gap
        errors = load.errors_since(rejoined, time.monotonic())
        after = leader_master(svcs)
        print(f"  {REJOIN_WATCH_S} s after the rejoin: {after.name} leads, the longest pause")
        print(f"  between acknowledged writes {gap:.1f} s, errors {errors}")
        assert unreadable(s3_2, before) == []

        # 3. an S3 node: the client goes to the other (as the proxy in front of them does)
        before = load.snapshot()
        killed = time.monotonic()
        kill9(s3_1)
        load.use([s3_2])
        assert http_health(f"{s3_1.endpoint}/healthz") is not None
        assert http_health(f"{s3_2.endpoint}/healthz") is None
        recovery["S3 node"] = wait_recovered(load, killed, "S3 node 1 killed")
        lost = unreadable(s3_2, before)
        print(f"  S3 node 1 down: {len(lost)} of {len(before)} objects unreadable through node 2")
        assert lost == []
        print(f"  S3 node 1 back in {restart(s3_1):.1f} s")
        load.use([s3_1, s3_2])
        time.sleep(3)
    finally:
        load.stopping.set()
        worker.join(timeout=30)
    print(f"  memory (RSS) of the cluster's processes: {rss_mb(svcs)}")
    final = load.snapshot()
    with load.lock:
        puts = sum(1 for e in load.events if e[1] == "put")
        gets = sum(1 for e in load.events if e[1] == "get")
    for node in (s3_1, s3_2):
        assert unreadable(node, final) == [], node.name
    print(
        f"  {puts} PUTs ({len(final)} acknowledged), {gets} GETs; every acknowledged object "
        f"reads back through both S3 nodes; recovery: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in recovery.items())
    )
