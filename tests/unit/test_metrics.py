"""The indexer's metrics (indexer/metrics.py): route templates, never raw paths; the
workers of one node added up in multiprocess mode; the fleet gauges from the registry's
rows; no answer to a request that came through the gateway; output promtool accepts."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.middleware.base import BaseHTTPMiddleware

from deploy.stack.settings import REPO_ROOT
from indexer import metrics
from indexer.metrics import GatewayMetrics

PROMTOOL = Path("/usr/bin/promtool")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture()
def client() -> TestClient:
    app = FastAPI()
    router = APIRouter()

    @router.get("/v1/institutions/{code}/patients/{mrn}")
    def patient(code: str, mrn: str) -> dict[str, str]:
        return {"code": code}

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {}

    app.include_router(router, prefix="/api")  # as the indexer's routers are

    async def passthrough(request: Request, call_next):  # type: ignore[no-untyped-def]
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)  # as the indexer has
    metrics.set_fleet_source(None)
    metrics.install(app, fleet_source=lambda: [])
    return TestClient(app)


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    route = "/api/v1/institutions/{code}/patients/{mrn}"
    key = (
        "imgcloud_indexer_requests_total",
        (("method", "GET"), ("route", route), ("status", "200")),
    )
    before = samples(client.get("/metrics").text).get(key, 0.0)
    assert client.get("/api/v1/institutions/H0001/patients/MRN-4711").status_code == 200
    assert client.get("/no/such/MRN-4712").status_code == 404
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert "MRN-4711" not in text and "MRN-4712" not in text and "/no/such" not in text
    found = samples(text)
    assert found[key] == before + 1
    assert (
        found[
            (
                "imgcloud_indexer_requests_total",
                (("method", "GET"), ("route", "unmatched"), ("status", "404")),
            )
        ]
        >= 1
    )
    assert (
        found[
            (
                "imgcloud_indexer_request_duration_seconds_count",
                (("method", "GET"), ("route", route)),
            )
        ]
        >= 1
    )
    health = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert found[("imgcloud_indexer_requests_total", health)] >= 1


def test_no_metrics_through_the_gateway(client: TestClient) -> None:
    for path in ("/metrics", "/metrics/fleet"):
        assert client.get(path, headers={"X-Gateway-Secret": "anything"}).status_code == 404
        assert client.get(path).status_code == 200


def test_fleet_gauges_come_from_the_source(client: TestClient) -> None:
    rows = [
        GatewayMetrics(
            "gateway-h0001",
            "H0001",
            stale=True,
            heartbeat_age_s=200.0,
            queue_depth=4,
            oldest_undelivered_s=35.0,
            failing_deliveries=1,
            cert_expiry_s={"dicom_tls": 86400.0},
        ),
        GatewayMetrics("gateway-h0002", "H0002", stale=False, heartbeat_age_s=5.0),
        GatewayMetrics("gateway-h0003", "H0003", stale=False),  # registered, never heard of
    ]
    metrics.set_fleet_source(lambda: rows)
    try:
        found = samples(client.get("/metrics/fleet").text)
    finally:
        metrics.set_fleet_source(None)
    assert found[("imgcloud_gateways", (("state", "ok"),))] == 2
    assert found[("imgcloud_gateways", (("state", "stale"),))] == 1
    age = "imgcloud_gateway_last_heartbeat_age_seconds"
    assert found[(age, (("gateway", "gateway-h0001"), ("institution", "H0001")))] == 200
    assert found[(age, (("gateway", "gateway-h0002"), ("institution", "H0002")))] == 5
    assert not any(name == age and ("gateway", "gateway-h0003") in labels for name, labels in found)
    assert found[("imgcloud_gateway_queue_depth", (("gateway", "gateway-h0001"),))] == 4
    assert found[("imgcloud_gateway_failing_deliveries", (("gateway", "gateway-h0001"),))] == 1
    assert (
        found[
            (
                "imgcloud_gateway_cert_expiry_seconds",
                (("cert", "dicom_tls"), ("gateway", "gateway-h0001")),
            )
        ]
        == 86400
    )


def test_a_failing_fleet_source_fails_the_scrape(client: TestClient) -> None:
    def broken() -> list[GatewayMetrics]:
        raise RuntimeError("database away")

    metrics.set_fleet_source(broken)
    try:
        assert client.get("/metrics/fleet").status_code == 503
    finally:
        metrics.set_fleet_source(None)


WORKER = """
import os, sys
from indexer import metrics
metrics.REQUESTS.labels("GET", "/api/healthz", "200").inc(int(sys.argv[1]))
metrics.AUDIT_BACKLOG.set(int(sys.argv[2]))
sys.stdout.write(str(os.getpid()))
"""


def test_workers_of_a_node_add_up(tmp_path: Path) -> None:
    """Two worker processes write to one directory; a third answers for both. The live
    gauge of a worker that is gone stops counting once forget_dead_workers runs."""
    env = os.environ | {metrics.MULTIPROC_ENV: str(tmp_path / "node"), "PYTHONPATH": str(REPO_ROOT)}
    for count, backlog in ((3, 5), (4, 7)):
        subprocess.run([sys.executable, "-c", WORKER, str(count), str(backlog)], env=env,
                       check=True, timeout=60, cwd=REPO_ROOT)  # fmt: skip
    reader = """
import sys
from prometheus_client import generate_latest
from indexer import metrics
before = generate_latest(metrics.node_registry()).decode()
metrics.forget_dead_workers()
sys.stdout.write(before + "\\n#after\\n" + generate_latest(metrics.node_registry()).decode())
"""
    out = subprocess.run([sys.executable, "-c", reader], env=env, check=True, timeout=60,
                         cwd=REPO_ROOT, capture_output=True, text=True).stdout  # fmt: skip
    before, after = out.split("\n#after\n")
    key = (
        "imgcloud_indexer_requests_total",
        (("method", "GET"), ("route", "/api/healthz"), ("status", "200")),
    )
    assert samples(before)[key] == 7
    assert samples(before)[("imgcloud_indexer_audit_backlog", ())] == 12
    assert samples(after)[key] == 7  # counters of finished workers stay
    assert samples(after).get(("imgcloud_indexer_audit_backlog", ()), 0) == 0
    if PROMTOOL.exists():
        lint = subprocess.run([str(PROMTOOL), "check", "metrics"], input=before, text=True,
                              capture_output=True, timeout=30, check=False)  # fmt: skip
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_registry_row_as_metrics() -> None:
    now = dt.datetime(2026, 12, 8, 2, 0, tzinfo=dt.UTC)
    heartbeat = {
        "queue_depth": 4,
        "oldest_undelivered_age_s": 35.5,
        "failing_deliveries": 1,
        "cert_expiry": {"dicom_tls": "2026-12-09T02:00:00Z", "broken": "not a date"},
        "disk_free_bytes": 123,
    }
    row = metrics.gateway_metrics(
        "gateway-h0001", "H0001", False, now - dt.timedelta(seconds=12), heartbeat, now
    )
    assert row == GatewayMetrics(
        "gateway-h0001",
        "H0001",
        stale=False,
        heartbeat_age_s=12.0,
        queue_depth=4,
        oldest_undelivered_s=35.5,
        failing_deliveries=1,
        cert_expiry_s={"dicom_tls": 86400.0},
    )
    # registered, no heartbeat yet; a field of the wrong type is left out
    bare = metrics.gateway_metrics("gateway-h0002", "H0002", True, None, {"queue_depth": "4"}, now)
    assert (bare.heartbeat_age_s, bare.queue_depth, bare.cert_expiry_s) == (None, None, {})
