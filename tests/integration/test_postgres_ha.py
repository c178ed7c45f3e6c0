"""The HA topology's PostgreSQL under a kill -9 (#14): three etcd members, two PostgreSQL
nodes under Patroni in synchronous mode, HAProxy's `postgres` front on the primary.

Under a stream of committed writes through the proxy, the primary's Patroni and
PostgreSQL are SIGKILLed (power loss): the standby must be promoted, every write the
client saw acknowledged must be on it, writes must succeed again through the same
address, and the killed node must come back as the synchronous standby. Then one etcd
member (the raft leader) is SIGKILLed: writes go on. Prints the seconds each took.

Starts only these services, in a scratch HA state directory on free ports. Run it under
the stack lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from imgcloud.central_schema import VERSION_TABLE
from psycopg import sql

from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context
from deploy.stack.processes import stop
from deploy.stack.services.base import Service
from deploy.stack.services.etcd import ETCD_BIN, Etcd
from deploy.stack.services.ha_proxy import HAPROXY_BIN
from deploy.stack.services.patroni import (
    PATRONI_BIN,
    PatroniNode,
    member_name,
    postgres_ha_services,
)
from deploy.stack.services.postgres import DATABASES, connect_superuser
from deploy.stack.services.prometheus import PostgresExporter
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from ..support.scratch_stack import scratch_state, start, start_all, stop_service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(p.exists() for p in (ETCD_BIN, PATRONI_BIN, HAPROXY_BIN)),
        reason="etcd-server, patroni or haproxy not installed (make install)",
    ),
]

FAILOVER_BOUND_S = 60.0
REJOIN_BOUND_S = 120.0
LAG_METRIC = "pg_stat_replication_pg_wal_lsn_diff"  # the replication-lag rule's input


@dataclass
class Writer:
    """INSERTs numbered rows through the proxy, one per transaction, as fast as it can;
    records which ones were acknowledged and the times of failed attempts."""

    dsn: str
    acknowledged: list[int] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    successes: list[float] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    next_id: int = 1

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stopping.is_set():
            row = self.next_id
            self.next_id += 1
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, connect_timeout=2, autocommit=True)
                conn.execute("SET statement_timeout = '10s'")
                conn.execute("INSERT INTO ha_writes (id) VALUES (%s)", (row,))
            except psycopg.Error as exc:
                self.failures.append(time.monotonic())
                self.errors[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            self.acknowledged.append(row)
            self.successes.append(time.monotonic())
        if conn is not None:
            conn.close()

    def first_success_after(self, moment: float) -> float | None:
        return next((t for t in self.successes if t > moment), None)


@contextmanager
def writing(ctx: StackContext, first_id: int) -> Iterator[Writer]:
    """A Writer running in a thread (as the indexer's role, in its database), numbering
    its rows from first_id."""
    writer = Writer(ctx.pg_dsn("indexer", *DATABASES["indexer"]), next_id=first_id)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        writer.stopping.set()
        thread.join(timeout=30)


@pytest.fixture
def ha_pg() -> Iterator[tuple[StackContext, list[Service]]]:
    """etcd x3, Patroni x2 and the proxy, started and provisioned as `up` does; all
    stopped afterwards, and any PostgreSQL a killed Patroni left behind."""
    with scratch_state("test-pg-ha-") as state:
        settings = dataclasses.replace(StackSettings.from_env(str(state)), topology="ha")
        ctx = load_context(settings)
        svcs = postgres_ha_services(ctx)
        try:
            start_all(svcs, settings.start_timeout_s)
            yield ctx, svcs
        finally:
            for svc in reversed(svcs):
                stop(settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=svc.stop_timeout_s)
            for node in (s for s in svcs if isinstance(s, PatroniNode)):
                node.stop_postgres_left_behind()


def role(node: PatroniNode) -> str | None:
    status = node.status()
    return None if status is None or status.get("state") != "running" else status["role"]


def is_primary(node: PatroniNode) -> bool:
    try:
        return httpx.get(f"{node.api_url}/primary", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def rows_on(ctx: StackContext, port_name: str) -> set[int]:
    role_name, secret = DATABASES["indexer"]
    with psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports[port_name],
        user=role_name,
        password=ctx.secrets[secret],
        dbname="indexer",
        connect_timeout=3,
    ) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM ha_writes").fetchall()}


def patronictl_roles(node: PatroniNode) -> dict[str, str]:
    """Each member's role as `patronictl list` prints it with this node's configuration."""
    listed = subprocess.run(
        ["/usr/bin/patronictl", "-c", str(node.config_file), "list", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {member["Member"]: member["Role"] for member in json.loads(listed.stdout)}


def sync_standbys(ctx: StackContext) -> list[tuple[str, str]]:
    with connect_superuser(ctx) as conn:
        rows = conn.execute(
            "SELECT application_name, sync_state FROM pg_stat_replication"
        ).fetchall()
    return [(name, state) for name, state in rows if state == "sync"]


def test_primary_killed_then_an_etcd_member_killed_under_writes(
    ha_pg: tuple[StackContext, list[Service]],
) -> None:
    ctx, svcs = ha_pg
    nodes = [s for s in svcs if isinstance(s, PatroniNode)]
    members = [s for s in svcs if isinstance(s, Etcd)]

    # Provisioned through the proxy as the small stack is: each database its role's only.
    with connect_superuser(ctx) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
                (list(DATABASES),),
            ).fetchall()
        )
        public = conn.execute(
            "SELECT count(*) FROM pg_database, aclexplode(datacl)"
            " WHERE datname = ANY(%s) AND grantee = 0",
            (list(DATABASES),),
        ).fetchone()
    assert owners == {db: owner for db, (owner, _) in DATABASES.items()}
    assert public == (0,)
    with connect_superuser(ctx, "orthanc_central") as conn:
        assert conn.execute(
            sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(VERSION_TABLE))
        ).fetchone()
    eventually(lambda: len(sync_standbys(ctx)) == 1, what="a synchronous standby", timeout=60)
    with psycopg.connect(ctx.pg_dsn("indexer", *DATABASES["indexer"]), autocommit=True) as c:
        c.execute("CREATE TABLE ha_writes (id bigint PRIMARY KEY)")

    primary = next(n for n in nodes if is_primary(n))
    standby = next(n for n in nodes if n is not primary)
    assert role(standby) == "replica"

    # 1. The primary loses power while writes stream through the proxy.
    with writing(ctx, first_id=1) as writer:
        eventually(lambda: len(writer.acknowledged) >= 200, what="writes before", timeout=30)
        killed_at = time.monotonic()
        primary.kill()
        assert primary.pid() is None and primary.postmaster_pid() is None
        eventually(lambda: is_primary(standby), what="the standby promoted", timeout=90)
        promoted_s = time.monotonic() - killed_at
        eventually(
            lambda: (
                len(writer.successes) > 200
                and writer.failures
                and writer.successes[-200] > writer.failures[-1]
            ),
            what="200 writes in a row after the failover",
            timeout=90,
        )
    # The outage: from the kill to the first write acknowledged after the last failed one.
    recovered_at = writer.first_success_after(writer.failures[-1])
    assert recovered_at is not None
    recovery_s = recovered_at - killed_at
    acknowledged = set(writer.acknowledged)
    present = rows_on(ctx, "postgres")  # the proxy's address: the new primary
    lost = acknowledged - present
    print(
        f"\nPostgreSQL primary {primary.name} SIGKILLed: {standby.name} promoted after "
        f"{promoted_s:.1f} s, writes through the proxy again after {recovery_s:.1f} s; "
        f"{len(acknowledged)} writes acknowledged, {len(lost)} of them lost, "
        f"{len(writer.failures)} failed attempts (not acknowledged, the client retries: "
        f"{dict(writer.errors)})"
    )
    assert not lost
    assert recovery_s < FAILOVER_BOUND_S
    assert writer.acknowledged[-1] in present  # written after the failover, same address

    # 2. The killed node comes back as the synchronous standby (pg_rewind or a new clone).
    restarted_at = time.monotonic()
    primary.prepare()
    primary.start()
    primary.wait_healthy(ctx.settings.start_timeout_s)
    eventually(lambda: role(primary) == "replica", what="the old primary a replica", timeout=90)
    # Synchronous in PostgreSQL, and named in Patroni's /sync key (what makes it the one
    # node that may be promoted), as the operator reads it with patronictl (docs/ha.md).
    expected = {member_name(standby.node): "Leader", member_name(primary.node): "Sync Standby"}
    eventually(
        lambda: (
            sync_standbys(ctx) == [(member_name(primary.node), "sync")]
            and patronictl_roles(primary) == expected
        ),
        what="the old primary the synchronous standby",
        timeout=REJOIN_BOUND_S,
    )
    rejoin_s = time.monotonic() - restarted_at
    rejoined = eventually(
        lambda: acknowledged <= rows_on(ctx, f"pg_node_{primary.node}") or None,
        what="every acknowledged write on the rejoined node",
        timeout=30,
    )
    assert rejoined
    print(f"{primary.name} back as the synchronous standby {rejoin_s:.1f} s after its restart")

    # 3. The etcd raft leader dies: two members keep the quorum, the primary keeps its key.
    leader = etcd_leader(members)
    with writing(ctx, first_id=1_000_000) as writer:
        eventually(lambda: len(writer.acknowledged) >= 100, what="writes before", timeout=30)
        killed_at = time.monotonic()
        pid = leader.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # Longer than Patroni's leader key TTL: the primary must have renewed it meanwhile.
        time.sleep(15)
        after = [t for t in writer.successes if t > killed_at]
        failed = [t for t in writer.failures if t > killed_at]
    gaps = [b - a for a, b in zip([killed_at, *after], after, strict=False)]
    longest_gap = max(gaps, default=15.0)
    print(
        f"etcd leader {leader.name} SIGKILLed: {len(after)} writes in the next 15 s, "
        f"{len(failed)} failed ({dict(writer.errors)}), longest gap between acknowledged "
        f"writes {longest_gap:.2f} s"
    )
    assert is_primary(standby)
    assert len(after) > 100
    assert not failed
    assert set(writer.acknowledged) <= rows_on(ctx, "postgres")
    leader.prepare()
    leader.start()
    leader.wait_healthy(60)


def etcd_leader(members: list[Etcd]) -> Etcd:
    """The member that is the raft leader (its status's leader is its own member id)."""
    for member in members:
        status = httpx.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=3)
        body = status.json()
        if body["leader"] == body["header"]["member_id"]:
            return member
    raise AssertionError("no etcd member says it leads")


def test_the_exporter_reports_the_standby_s_lag_for_the_alert(
    ha_pg: tuple[StackContext, list[Service]],
) -> None:
    """The input of the PostgresReplicationLag rule (deploy/prometheus/alerts.yml), as
    Debian's postgres exporter reports it through the proxy's front: one series per
    standby, named by its cluster member, in bytes."""
    ctx, svcs = ha_pg
    nodes = [s for s in svcs if isinstance(s, PatroniNode)]
    eventually(lambda: sync_standbys(ctx), what="a synchronous standby", timeout=REJOIN_BOUND_S)
    exporter = PostgresExporter(ctx)
    start(exporter)
    try:

        def lag_series() -> list[str]:
            text = httpx.get(f"{ctx.http('postgres_exporter')}/metrics", timeout=5).text
            return [ln for ln in text.splitlines() if ln.startswith(LAG_METRIC + "{")]

        series = eventually(lag_series, what=f"{LAG_METRIC} from the exporter")
        standby = next(n for n in nodes if not is_primary(n))
        assert any(f'application_name="{member_name(standby.node)}"' in s for s in series), series
        assert all(float(s.rsplit(" ", 1)[1]) >= 0 for s in series)
    finally:
        stop_service(exporter)
