"""Fleet bench (#15): N simulated hospital gateways against central, through the gateway.

    flock /tmp/imgcloud-stack.lock sh -c 'export STACK_DIR=var/bench-fleet; \
        .venv/bin/python -m deploy.stack up && .venv/bin/python -m bench.fleet_bench; \
        .venv/bin/python -m deploy.stack down'
    options: [--gateways 500] [--interval 30] [--window 90] [--layout fair|shared]

Each simulated gateway has an account of its own in the stack's Keycloak (client
`gateway-f0001` ... with role `gateway` and its own institution claim, made by the same
helpers as the stack's gateway accounts): every heartbeat carries a real token of a distinct
client, so central keeps one registry row per gateway, verifies (and caches) 500 tokens and
writes one audit record per call, as it would for 500 hospitals. The clients are httpx
async clients in this one process, over keep-alive HTTPS connections to nginx.

Two windows, the two ways an edge takes its rules (central chooses, heartbeat answer's
`rules_long_poll`): "rules on the heartbeat" (central's default), a heartbeat every
`interval` s (spread evenly) and a rules fetch (wait=0) when its answer names a newer
version; then "rules long poll" (INDEXER_FLEET_RULES_LONG_POLL=true), the heartbeats plus a
rules long poll per gateway (wait=25, asked again at once). A few rules changes are pushed
in each window (how soon the gateway has each). Reported per window: heartbeat latency
p50/p99 (client side, through nginx), CPU of the indexer (all its processes: `serve` with
its audit sealer, uvicorn and its workers; /proc/PID/stat), PostgreSQL, nginx, Keycloak
and this process as % of one core, the indexer's CPU per heartbeat, and PostgreSQL rows
and bytes per gateway per day (the registry row; audit rows and bytes, WAL, scaled from
the window). Fair layout (default, as bench/archive_bench.py): the indexer alone on CPU 1,
everything else on the other CPUs; restored at the end.

Also the extra accounts' helpers for tests/integration/test_fleet_central.py: gateways
that no real edge of the stack heartbeats as (the demo edges are gateway-h0001/-h0002).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from keycloak import KeycloakAdmin

from auth.provision import gateway_client, gateway_client_id, gateway_service_account
from deploy.stack.client import StackClient
from deploy.stack.context import REALM, StackContext
from deploy.stack.launcher import load_context
from deploy.stack.processes import read_pid
from deploy.stack.services.keycloak import ADMIN_USER
from deploy.stack.settings import StackSettings

from .cpu import Group, Pinning, delta, usage


def add_gateway_accounts(ctx: StackContext, institutions: list[str]) -> dict[str, str]:
    """Create (or overwrite) one gateway client per institution code: client id -> secret."""
    made = {gateway_client_id(code): secrets.token_urlsafe(24) for code in institutions}
    admin = KeycloakAdmin(
        server_url=ctx.keycloak_internal_url.rstrip("/") + "/",
        username=ADMIN_USER,
        password=ctx.secrets["keycloak_admin"],
        realm_name="master",
        user_realm_name="master",
        timeout=120,
    )
    admin.change_current_realm(REALM)
    admin.partial_import_realm(
        REALM,
        {
            "ifResourceExists": "OVERWRITE",
            "clients": [
                gateway_client(code, made[gateway_client_id(code)]) for code in institutions
            ],
            "users": [gateway_service_account(code) for code in institutions],
        },
    )
    return made


def account_token(
    stack: StackClient, client_id: str, secret: str, client: httpx.Client | None = None
) -> str:
    """A client-credentials access token, through the gateway as an edge gets one."""
    url = f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}/protocol/openid-connect/token"
    http = client or httpx.Client(verify=stack.ca_context(), timeout=30.0)
    try:
        answer = http.post(url, data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        answer.raise_for_status()
        return str(answer.json()["access_token"])
    finally:
        if client is None:
            http.close()


# --- the bench -----------------------------------------------------------------------

BEAT: dict[str, Any] = {
    "software_version": "2026.12.0",
    "orthanc_version": "1.12.10",
    "plugins": {"python": "7.0", "imaging-cloud": "2026.12.0"},
    "uptime_s": 1.0,
    "queue_depth": 3,
    "oldest_undelivered_age_s": 12.0,
    "failing_deliveries": 0,
    "failure_reasons": {},
    "last_delivery_at": "2026-12-08T02:00:00Z",
    "disk_free_bytes": 123456789012,
    "cert_expiry": {"dicom_tls": "2027-12-01T00:00:00Z", "ca": "2036-12-01T00:00:00Z"},
    "error_counts": {"forward": 0},
    "rules_version": 0,
    "release": "2026.12.0",
}


@dataclass
class Phase:
    """What one measured window saw."""

    name: str
    window_s: float = 0.0
    heartbeats: int = 0
    polls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wake_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    db: dict[str, float] = field(default_factory=dict)


class Load:
    """N simulated gateways: a heartbeat every `interval_s` (spread evenly) that fetches the
    rules when its answer names a newer version, or, with `long_poll`, a rules long poll
    each, always waiting (wait=25, asked again at once)."""

    def __init__(
        self, base_url: str, ca: ssl.SSLContext, tokens: dict[str, str], interval_s: float
    ) -> None:
        self.tokens = tokens
        self.interval_s = interval_s
        limits = httpx.Limits(
            max_connections=2 * len(tokens) + 10, max_keepalive_connections=2 * len(tokens) + 10
        )
        self.http = httpx.AsyncClient(base_url=base_url, verify=ca, limits=limits, timeout=60.0)
        self.counting = False
        self.phase = Phase("")
        self.have: dict[str, int] = dict.fromkeys(tokens, 0)
        self.put_at: dict[str, float] = {}
        self.long_poll = False

    async def beat(self, gid: str, offset_s: float, stop: asyncio.Event) -> None:
        await asyncio.sleep(offset_s)
        headers = {"Authorization": f"Bearer {self.tokens[gid]}"}
        while not stop.is_set():
            started = time.perf_counter()
            try:
                answer = await self.http.post("/api/v1/fleet/heartbeat", json=BEAT, headers=headers)
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - started
            if self.counting:
                self.phase.heartbeats += 1
                self.phase.errors += not ok
                self.phase.latencies_ms.append(took * 1000)
            if ok and not self.long_poll and (answer.json()["rules_version"] or 0) > self.have[gid]:
                await self.fetch(gid, headers, 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self.interval_s - took))

    async def poll(self, gid: str, offset_s: float, stop: asyncio.Event) -> None:
        await asyncio.sleep(offset_s)
        headers = {"Authorization": f"Bearer {self.tokens[gid]}"}
        while not stop.is_set():
            if not await self.fetch(gid, headers, 25):
                await asyncio.sleep(1.0)

    async def fetch(self, gid: str, headers: dict[str, str], wait: int) -> bool:
        """GET /fleet/rules above what the gateway has: True if central answered."""
        try:
            answer = await self.http.get(
                "/api/v1/fleet/rules",
                params={"have": self.have[gid], "wait": wait},
                headers=headers,
            )
            ok = answer.status_code in (200, 204)
        except httpx.HTTPError:
            ok = False
        if ok and answer.status_code == 200:
            self.have[gid] = int(answer.json()["version"])
            if gid in self.put_at:
                self.phase.wake_ms.append((time.perf_counter() - self.put_at.pop(gid)) * 1000)
        if self.counting:
            self.phase.polls += 1
            self.phase.errors += not ok
        return ok


ON_HEARTBEAT = "rules on the heartbeat (central's default)"
LONG_POLL = "rules long poll (INDEXER_FLEET_RULES_LONG_POLL=true)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


DB_SQL = """
SELECT pg_current_wal_lsn()::text,
       (SELECT count(*) FROM audit_events),
       pg_total_relation_size('audit_events'),
       pg_total_relation_size('fleet_gateways'),
       (SELECT count(*) FROM fleet_gateways)
"""


def db_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        lsn, audit_rows, audit_bytes, fleet_bytes, gateways = conn.execute(DB_SQL).fetchone()  # type: ignore[misc]
        return {
            "lsn": lsn,
            "audit_rows": audit_rows,
            "audit_bytes": audit_bytes,
            "fleet_bytes": fleet_bytes,
            "gateways": gateways,
        }


def wal_diff(dsn: str, later: str, earlier: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", [later, earlier]).fetchone()[0])  # type: ignore[index]


def get_tokens(stack: StackClient, made: dict[str, str]) -> dict[str, str]:
    with (
        httpx.Client(verify=stack.ca_context(), timeout=30.0) as http,
        ThreadPoolExecutor(16) as pool,
    ):
        return dict(
            zip(made, pool.map(lambda c: account_token(stack, c, made[c], http), made), strict=True)
        )


async def run_phase(
    name: str,
    stack: StackClient,
    tokens: dict[str, str],
    args: argparse.Namespace,
    groups: list[Group],
    dsn: str,
) -> Phase:
    load = Load(stack["GATEWAY_URL"], stack.ca_context(), tokens, args.interval)
    load.long_poll = name == LONG_POLL
    stop = asyncio.Event()
    ids = sorted(tokens)
    spread = args.interval / len(ids)
    tasks = [asyncio.create_task(load.beat(gid, i * spread, stop)) for i, gid in enumerate(ids)]
    if load.long_poll:
        tasks += [
            asyncio.create_task(load.poll(gid, i * 25.0 / len(ids), stop))
            for i, gid in enumerate(ids)
        ]
    # connections, first token verifications, the polls' first round
    await asyncio.sleep(args.warmup)
    phase = load.phase = Phase(name)
    before_cpu, before_db, started = usage(groups), db_state(dsn), time.monotonic()
    load.counting = True
    if args.admin_token:
        await push_changes(load, stack, args, ids)
    await asyncio.sleep(max(0.0, args.window - (time.monotonic() - started)))
    load.counting = False
    phase.window_s = time.monotonic() - started
    after_cpu, after_db = usage(groups), db_state(dsn)
    stop.set()
    for task in tasks:  # a poll waits up to 25 s for its answer: not for that
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await load.http.aclose()
    phase.cpu = {k: v.cpu_s for k, v in delta(after_cpu, before_cpu).items()}
    phase.db = {
        "wal_bytes": wal_diff(dsn, after_db["lsn"], before_db["lsn"]),
        "audit_rows": after_db["audit_rows"] - before_db["audit_rows"],
        "audit_bytes": after_db["audit_bytes"] - before_db["audit_bytes"],
        "fleet_bytes": after_db["fleet_bytes"],
        "gateways": after_db["gateways"],
    }
    return phase


async def push_changes(
    load: Load, stack: StackClient, args: argparse.Namespace, ids: list[str]
) -> None:
    """A few rules changes during the window: how soon the gateway has each."""
    headers = {"Authorization": f"Bearer {args.admin_token}"}
    async with httpx.AsyncClient(
        base_url=stack["GATEWAY_URL"], verify=stack.ca_context(), headers=headers, timeout=30
    ) as admin:
        for gid in random.sample(ids, min(args.changes, len(ids))):
            load.put_at[gid] = time.perf_counter()
            answer = await admin.put(
                f"/api/v1/fleet/gateways/{gid}/rules", json={"document": {"compression": "keep"}}
            )
            answer.raise_for_status()
            await asyncio.sleep(args.window / (2 * max(1, args.changes)))


def report(phase: Phase, gateways: int, interval_s: float) -> str:
    beats = max(1, phase.heartbeats)
    day = 86400 / interval_s / beats  # the window's heartbeats, scaled to a gateway's day
    core = {k: 100 * v / phase.window_s for k, v in phase.cpu.items()}
    lat = phase.latencies_ms
    db = phase.db
    rows = max(1, int(db["gateways"]))
    lines = [
        f"== {phase.name}: {gateways} gateways, heartbeat every {interval_s:.0f} s, "
        f"{phase.window_s:.0f} s measured",
        f"heartbeats {phase.heartbeats} ({phase.heartbeats / phase.window_s:.1f}/s), "
        f"rules requests answered {phase.polls}, errors {phase.errors}",
        f"heartbeat latency through the gateway: p50 {percentile(lat, 0.5):.1f} ms, "
        f"p99 {percentile(lat, 0.99):.1f} ms, max {max(lat, default=0):.1f} ms",
        "CPU, % of one core: " + ", ".join(f"{k} {v:.2f} %" for k, v in core.items()),
        "indexer CPU per heartbeat (all its work in the window / heartbeats): "
        f"{1000 * phase.cpu.get('indexer', 0) / beats:.2f} ms",
        f"PostgreSQL: fleet_gateways {db['gateways']} rows, {db['fleet_bytes'] / rows:.0f} bytes "
        "per gateway (table + index; one row upserted, whatever the number of heartbeats)",
        f"  per gateway per day: audit_events {db['audit_rows'] * day:.0f} rows, "
        f"{db['audit_bytes'] * day / 1e6:.2f} MB; WAL {db['wal_bytes'] * day / 1e6:.2f} MB",
    ]
    if phase.wake_ms:
        lines.append(
            f"rules change to the gateway's having it: {len(phase.wake_ms)} changes, "
            f"p50 {percentile(phase.wake_ms, 0.5):.0f} ms, max {max(phase.wake_ms):.0f} ms"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=500)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=35.0)
    parser.add_argument("--window", type=float, default=90.0)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--layout", choices=["fair", "shared"], default="fair")
    args = parser.parse_args()
    settings = StackSettings.from_env()
    stack = StackClient.from_file(settings.stack_env)
    ctx = load_context(settings)
    dsn = ctx.pg_dsn("indexer", "indexer", "db_indexer")
    codes = [f"F{n:04d}" for n in range(1, args.gateways + 1)]
    started = time.monotonic()
    made = add_gateway_accounts(ctx, codes)
    print(
        f"{len(made)} gateway accounts in Keycloak ({time.monotonic() - started:.0f} s)", flush=True
    )
    run_dir = settings.run_dir
    services = {
        name: read_pid(run_dir, name) for name in ("indexer", "postgres", "gateway", "keycloak")
    }
    groups = [Group(name, roots=frozenset({pid})) for name, pid in services.items() if pid]
    groups.append(Group("bench", pids=frozenset({os.getpid()})))
    pinning = Pinning()
    all_cpus = set(range(os.cpu_count() or 1))
    if args.layout == "fair" and len(all_cpus) >= 2:  # the indexer alone on CPU 1
        plan = {g.name: ({1} if g.name == "indexer" else all_cpus - {1}) for g in groups}
        print(
            f"fair layout: indexer on CPU 1, {pinning.apply(groups, plan)} threads pinned",
            flush=True,
        )
    try:
        phases = []
        for name in (ON_HEARTBEAT, LONG_POLL):
            tokens = get_tokens(stack, made)
            admin = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
            args.admin_token = admin["access_token"]
            if args.layout == "fair" and len(all_cpus) >= 2:  # threads started since
                pinning.apply(groups, plan)
            phase = asyncio.run(run_phase(name, stack, tokens, args, groups, dsn))
            print(report(phase, args.gateways, args.interval), flush=True)
            phases.append(phase)
    finally:
        pinning.restore(groups, all_cpus)
    return 0 if all(p.errors == 0 for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
