"""Monitoring (#15) beside a running stack: the exporters and a real Prometheus
(deploy/stack/services/prometheus.py) scrape every service; every target is up in
Prometheus's own view (/api/v1/targets), a real metric of each kind has a value, the rules
are loaded, and the monitoring processes and files are as private as they claim.

Until create_app installs them (report of #15), the test runs the indexer with its metrics
(indexer.metrics.instrumented_app) and puts the stack's back afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import stat
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from deploy.stack.client import StackClient
from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context, stop_service
from deploy.stack.processes import stop
from deploy.stack.services.base import Service
from deploy.stack.services.indexer import Indexer
from deploy.stack.services.prometheus import (
    MONITORING_ROLE,
    RUN_AS,
    Prometheus,
    monitoring_password,
    monitoring_services,
)
from deploy.stack.settings import StackSettings

SCRAPE_S = 2
WAIT_S = 90.0


class InstrumentedIndexer(Indexer):
    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("indexer.main:app")
        return [*argv[:at], "--factory", "indexer.metrics:instrumented_app", *argv[at + 1 :]]


def restart(ctx: StackContext, name: str, svc: Service) -> None:
    stop_service(ctx, name)
    svc.start()
    svc.wait_healthy(ctx.settings.start_timeout_s)


def keycloak_has_metrics(ctx: StackContext) -> bool:
    stamp = ctx.settings.keycloak_home / ".built"
    return stamp.exists() and "--metrics-enabled=true" in stamp.read_text()


MODULE_START = [dt.datetime.now(dt.UTC)]  # when `monitored` began (set again there)


@pytest.fixture(scope="module")
def monitored(stack: StackClient) -> Iterator[tuple[StackContext, str]]:
    ctx = load_context(StackSettings.from_env(stack["STACK_DIR"]))
    restart(ctx, "indexer", InstrumentedIndexer(ctx))
    svcs = monitoring_services(ctx)
    for svc in svcs:
        if isinstance(svc, Prometheus):
            svc.scrape_interval_s = SCRAPE_S
    MODULE_START[0] = dt.datetime.now(dt.UTC)
    started: list[Service] = []  # a launcher that starts them already: left running
    try:
        for svc in svcs:
            if svc.pid() is None:
                svc.prepare()
                svc.start()
                started.append(svc)
            svc.wait_healthy(60)
        yield ctx, ctx.http("prometheus")
    finally:
        for svc in reversed(started):
            stop(ctx.settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=30)
        restart(ctx, "indexer", Indexer(ctx))


def targets(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=5)
    answer.raise_for_status()
    return list(answer.json()["data"]["activeTargets"])


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    answer.raise_for_status()
    return list(answer.json()["data"]["result"])


def wait_for(what: str, check, timeout_s: float = WAIT_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


def test_every_target_is_up(monitored: tuple[StackContext, str]) -> None:
    _, url = monitored
    expected = {
        "prometheus",
        "indexer",
        "indexer-fleet",
        "orthanc-central",
        "orthanc-edge-a",
        "orthanc-edge-b",
        "seaweedfs",
        "postgres",
        "nginx",
    }

    def all_up() -> dict[str, str] | None:
        found = {t["labels"]["job"]: t for t in targets(url) if t["labels"]["job"] != "keycloak"}
        health = {job: f"{t['health']} {t.get('lastError', '')}" for job, t in found.items()}
        if set(found) == expected and all(t["health"] == "up" for t in found.values()):
            return health
        print(health)
        return None

    wait_for("every target up", all_up)


def test_keycloak_metrics(monitored: tuple[StackContext, str]) -> None:
    ctx, url = monitored
    if not keycloak_has_metrics(ctx):
        pytest.xfail("Keycloak built with --metrics-enabled=false (deploy/install.sh)")
    wait_for(
        "keycloak target up",
        lambda: [
            t for t in targets(url) if t["labels"]["job"] == "keycloak" and t["health"] == "up"
        ],
    )
    assert query(url, 'count({job="keycloak", __name__=~"jvm_.*"})')


# One real metric per kind of target, with the value it must have now.
METRICS = {
    "postgres": ('pg_up{job="postgres"}', lambda v: v == 1),
    "postgres databases": (
        'pg_database_size_bytes{datname="indexer"}',
        lambda v: v > 1_000_000,
    ),
    "nginx": ('nginx_connections_accepted{job="nginx"}', lambda v: v >= 1),
    "seaweedfs": ('sum(SeaweedFS_s3_request_total{job="seaweedfs"})', lambda v: v >= 1),
    "orthanc central": ('orthanc_count_instances{job="orthanc-central"}', lambda v: v >= 0),
    "orthanc edge a": ('orthanc_up_time_s{job="orthanc-edge-a"}', lambda v: v > 0),
    "indexer requests": (
        'sum(imgcloud_indexer_requests_total{route="/api/healthz",status="200"})',
        lambda v: v >= 1,
    ),
    "indexer pool": (
        'sum(imgcloud_indexer_db_pool_connections{pool="async"})',
        lambda v: v >= 2,  # min_size=2 per worker
    ),
    "fleet": ('max without (instance) (imgcloud_gateways{state="stale"})', lambda v: v >= 0),
    "prometheus": ('prometheus_tsdb_head_series{job="prometheus"}', lambda v: v > 100),
}


@pytest.mark.parametrize("kind", list(METRICS))
def test_a_real_metric_of_each_kind(monitored: tuple[StackContext, str], kind: str) -> None:
    _, url = monitored
    expr, good = METRICS[kind]

    def value() -> float | None:
        result = query(url, expr)
        return float(result[0]["value"][1]) if result else None

    found = wait_for(f"{kind}: {expr}", lambda: value() is not None and [value()])
    assert good(found[0]), f"{expr} = {found[0]}"


def test_the_edge_plugin_publishes_its_queue(monitored: tuple[StackContext, str]) -> None:
    _, url = monitored
    wait_for("imgcloud_edge_queue_depth", lambda: query(url, "imgcloud_edge_queue_depth"), 20)


def send_heartbeat(stack: StackClient, institution: str, body: dict[str, Any]) -> None:
    """A heartbeat as the hospital's gateway account sends it, through the gateway."""
    with stack.gateway(stack.gateway_account_token(institution)) as client:
        answer = client.post("/api/v1/fleet/heartbeat", json=body)
    assert answer.status_code == 200, answer.text


def test_fleet_metrics_and_alert_from_a_heartbeat(
    stack: StackClient, monitored: tuple[StackContext, str]
) -> None:
    """Heartbeat -> registry -> /metrics/fleet (every indexer node) -> Prometheus -> the
    rule: a certificate 10 days from expiry raises GatewayCertificateExpiresSoon, once. The
    edge's own agent may send its heartbeat meanwhile: the test's is sent again each round."""
    _, url = monitored
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    body = {
        "software_version": "2026.12.0",
        "queue_depth": 7,
        "oldest_undelivered_age_s": 42.0,
        "failing_deliveries": 0,
        "cert_expiry": {"dicom_tls": expiry.isoformat().replace("+00:00", "Z")},
    }

    def fired() -> list[dict[str, Any]] | None:
        send_heartbeat(stack, "H0001", body)
        alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        mine = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "GatewayCertificateExpiresSoon"
            and a["labels"].get("gateway") == "gateway-h0001"
        ]
        return mine or None

    alerts = wait_for("GatewayCertificateExpiresSoon for gateway-h0001", fired, 60)
    assert len(alerts) == 1 and alerts[0]["labels"]["cert"] == "dicom_tls"
    assert "expires in 9d 23h" in alerts[0]["annotations"]["summary"]
    age = query(
        url,
        "max without (instance) "
        '(imgcloud_gateway_last_heartbeat_age_seconds{gateway="gateway-h0001"})',
    )
    assert age and 0 <= float(age[0]["value"][1]) < 90
    assert age[0]["metric"]["institution"] == "H0001"

    def queue_seen() -> list[dict[str, Any]]:
        send_heartbeat(stack, "H0001", body)
        return query(url, 'imgcloud_gateway_queue_depth{gateway="gateway-h0001"} == 7')

    seen = wait_for("queue depth 7", queue_seen, 30)
    assert {r["metric"]["job"] for r in seen} == {"indexer-fleet"}


def test_rules_are_loaded(monitored: tuple[StackContext, str]) -> None:
    ctx, url = monitored
    answer = httpx.get(f"{url}/api/v1/rules", timeout=5).json()
    names = {rule["name"] for group in answer["data"]["groups"] for rule in group["rules"]}
    assert {"GatewayStale", "ObjectStoreErrors", "EdgeCertificateExpiresSoon"} <= names
    assert len(names) == 12
    # Nothing else begins to fire while this module keeps the stack healthy: Keycloak's
    # target is down while its build has no metrics (TargetDown after 2 minutes: the rule
    # working), and the fleet test's certificate may still be in the registry.
    allowed = {("GatewayCertificateExpiresSoon", "indexer-fleet")}
    if not keycloak_has_metrics(ctx):
        allowed.add(("TargetDown", "keycloak"))
    # Gateways other tests of the session registered and left (the fleet's own tests) are
    # stale, rightly: only the stack's own two edges must be healthy.
    own = {"gateway-h0001", "gateway-h0002"}
    alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    firing = [
        a
        for a in alerts
        if a["state"] == "firing"
        and (a["labels"]["alertname"], a["labels"].get("job")) not in allowed
        and not (
            a["labels"]["alertname"].startswith("Gateway") and a["labels"].get("gateway") not in own
        )
    ]
    # With the stack the whole session shares, Prometheus has watched every earlier test,
    # some of which break things on purpose: what fired before this module began is theirs
    # (shown, with central's storage failures, so a CI log says what it was).
    earlier = [a for a in firing if began(a) < MODULE_START[0]]
    for alert in earlier:
        print(f"firing since before this module: {alert['labels']} since {alert['activeAt']}")
    if any(a["labels"]["alertname"].startswith("ObjectStore") for a in earlier):
        central_log = ctx.settings.log_dir / "central.log"
        failures = [ln for ln in central_log.read_text().splitlines() if "storage " in ln]
        print("central's storage failures:", *failures[-10:], sep="\n  ")
    assert [a["labels"] for a in firing if a not in earlier] == []


def began(alert: dict[str, Any]) -> dt.datetime:
    """When Prometheus saw the alert's condition first (its `activeAt`, RFC 3339)."""
    moment = alert["activeAt"].replace("Z", "+00:00")
    whole, _, rest = moment.partition(".")
    zone = rest[rest.index("+") :] if "+" in rest else ""
    return dt.datetime.fromisoformat(whole + zone if zone else moment)


def test_the_monitoring_role_sees_statistics_not_data(
    monitored: tuple[StackContext, str],
) -> None:
    ctx, _ = monitored
    login = (
        f"host=127.0.0.1 port={ctx.ports['postgres']} user={MONITORING_ROLE} "
        f"password={monitoring_password(ctx.secrets)} connect_timeout=3"
    )
    with psycopg.connect(f"{login} dbname=postgres") as conn:
        member = conn.execute("SELECT pg_has_role('pg_monitor', 'member')").fetchone()
        superuser = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert member == (True,) and superuser == (False,)
    for database in ("indexer", "orthanc_central", "keycloak", "seaweedfs"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(f"{login} dbname={database}").close()


def test_monitoring_runs_as_its_own_user_without_groups(
    monitored: tuple[StackContext, str],
) -> None:
    ctx, _ = monitored
    user = pwd.getpwnam(RUN_AS)
    for svc in monitoring_services(ctx):
        pid = svc.pid()
        assert pid is not None, svc.name
        status = dict(
            line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines()
        )
        assert status["Uid"].split()[:2] == [str(user.pw_uid)] * 2, svc.name
        assert status["Gid"].split()[:2] == [str(user.pw_gid)] * 2, svc.name
        assert status["Groups"].strip() == "", svc.name
    home = ctx.state / "prometheus"
    secrets = list((home / "secrets").iterdir())
    assert {p.name for p in secrets} == {"central.password", "edge-a.password", "edge-b.password"}
    for path in (home, home / "secrets", *secrets, home / "prometheus.yml"):
        info = path.stat()
        assert info.st_uid == user.pw_uid, path
        assert stat.S_IMODE(info.st_mode) & 0o077 == 0, path
    config = (home / "prometheus.yml").read_text()
    for name in ("central_orthanc", "edge_a_orthanc", "edge_b_orthanc"):
        assert ctx.secrets[name] not in config
    environ = open(f"/proc/{Prometheus(ctx).pid()}/environ", "rb").read()
    assert ctx.secrets["postgres_superuser"].encode() not in environ
    assert os.path.exists(ctx.state / "metrics" / "indexer")  # the node's multiprocess dir
