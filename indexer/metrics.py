"""The indexer's Prometheus metrics (prometheus-client), on its own port only.

- GET /metrics: this node's requests (count and latency by method, route *template* and
  status: never the raw path, which may carry an MRN), its audit writer's backlog and its
  database pools. uvicorn runs several workers: prometheus-client's multiprocess mode
  (PROMETHEUS_MULTIPROC_DIR, one directory per node, set by the stack) adds up what every
  worker of the node wrote, whichever worker answers the scrape.
- GET /metrics/fleet: the gateway fleet as central's registry holds it, read from the
  database at scrape time by a collector (never process-local gauges, which N workers and
  N nodes would each hold a copy of). Every node answers the same values: Prometheus
  scrapes them all (job indexer-fleet) and the alert rules take `max without (instance)`,
  so one node down loses nothing and two nodes do not double an alert
  (deploy/prometheus/alerts.yml).

Fleet metrics (from the registry's table, fleet_gateways, and the latest heartbeat each
gateway sent; another source may be set with set_fleet_source):
  imgcloud_gateways{state="ok|stale"}                          gateways in each state
  imgcloud_gateway_last_heartbeat_age_seconds{gateway,institution}
  imgcloud_gateway_queue_depth{gateway}                        studies not yet delivered
  imgcloud_gateway_oldest_undelivered_seconds{gateway}
  imgcloud_gateway_failing_deliveries{gateway}
  imgcloud_gateway_cert_expiry_seconds{gateway,cert}           seconds left (negative: expired)

What is trusted: the metrics hold no personal data (route templates, counts, gateway ids
and institution codes). The indexer listens on loopback; the gateway does not proxy
/metrics, and a request that bears the gateway's X-Gateway-Secret header (nginx sets it on
everything it passes to the indexer) is answered 404 here anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import glob
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR = os.environ.get(MULTIPROC_ENV)
if _DIR:  # before prometheus_client creates a value file there
    os.makedirs(_DIR, mode=0o700, exist_ok=True)

# ruff: noqa: E402 (prometheus_client reads the directory at import)
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)
SAMPLE_EVERY_S = 5.0
GATEWAY_HEADER = "x-gateway-secret"
UNMATCHED = "unmatched"  # no route: the raw path is never a label
SKIPPED = ("/metrics", "/metrics/fleet")

REQUESTS = Counter(
    "imgcloud_indexer_requests_total",
    "Requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "imgcloud_indexer_request_duration_seconds",
    "Time to answer a request, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
AUDIT_BACKLOG = Gauge(
    "imgcloud_indexer_audit_backlog",
    "Audit records queued in the workers and not yet written to the database.",
    multiprocess_mode="livesum",
)
DB_POOL = Gauge(
    "imgcloud_indexer_db_pool_connections",
    "Database connections of the workers' pools (pool=async|orm), by state.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)


@dataclass(frozen=True)
class GatewayMetrics:
    """One gateway's row of the fleet registry, as the metrics show it."""

    gateway: str  # the gateway's Keycloak client id (e.g. gateway-h0001)
    institution: str
    stale: bool
    heartbeat_age_s: float | None = None  # None: never sent one
    queue_depth: int | None = None
    oldest_undelivered_s: float | None = None
    failing_deliveries: int | None = None
    cert_expiry_s: dict[str, float] = field(default_factory=dict)  # cert name -> seconds


FleetSource = Callable[[], Iterable[GatewayMetrics]]
_fleet_source: FleetSource | None = None


def set_fleet_source(source: FleetSource | None) -> None:
    """Who gives the fleet's rows at scrape time (by default the registry's table,
    database_fleet_source: a short read-only query with its own timeout, in a worker
    thread). None: /metrics/fleet has no gateways."""
    global _fleet_source
    _fleet_source = source


class FleetCollector(Collector):
    """The fleet gauges from the source's rows, built at every scrape."""

    def __init__(self, source: Callable[[], FleetSource | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        source = self.source()
        rows = list(source()) if source is not None else []
        states = GaugeMetricFamily("imgcloud_gateways", "Gateways by state.", labels=["state"])
        stale = sum(1 for row in rows if row.stale)
        states.add_metric(["ok"], len(rows) - stale)
        states.add_metric(["stale"], stale)
        yield states
        age = GaugeMetricFamily(
            "imgcloud_gateway_last_heartbeat_age_seconds",
            "Seconds since the gateway's last heartbeat.",
            labels=["gateway", "institution"],
        )
        per_gateway = {
            "queue_depth": (
                "imgcloud_gateway_queue_depth",
                "Studies the gateway holds undelivered.",
            ),
            "oldest_undelivered_s": (
                "imgcloud_gateway_oldest_undelivered_seconds",
                "Age of the gateway's oldest undelivered study.",
            ),
            "failing_deliveries": (
                "imgcloud_gateway_failing_deliveries",
                "Deliveries the gateway reports failing.",
            ),
        }
        families = {
            attr: GaugeMetricFamily(name, text, labels=["gateway"])
            for attr, (name, text) in per_gateway.items()
        }
        certs = GaugeMetricFamily(
            "imgcloud_gateway_cert_expiry_seconds",
            "Seconds until each certificate of the gateway expires.",
            labels=["gateway", "cert"],
        )
        for row in rows:
            if row.heartbeat_age_s is not None:
                age.add_metric([row.gateway, row.institution], row.heartbeat_age_s)
            for attr, family in families.items():
                value = getattr(row, attr)
                if value is not None:
                    family.add_metric([row.gateway], float(value))
            for cert, seconds in sorted(row.cert_expiry_s.items()):
                certs.add_metric([row.gateway, cert], seconds)
        yield age
        yield from families.values()
        yield certs


FLEET_QUERY_TIMEOUT = "3s"  # a scrape must not wait on a busy database


def gateway_metrics(
    gateway: str,
    institution: str,
    stale: bool,
    last_heartbeat_at: dt.datetime | None,
    heartbeat: dict[str, Any] | None,
    now: dt.datetime,
) -> GatewayMetrics:
    """One fleet_gateways row as metrics: the latest heartbeat body's numbers (fleet
    contract fields; one that is missing or not a number is left out)."""
    body = heartbeat or {}

    def number(key: str) -> float | None:
        value = body.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    certs: dict[str, float] = {}
    expiry = body.get("cert_expiry")
    for name, text in expiry.items() if isinstance(expiry, dict) else ():
        try:
            moment = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is not None:
            certs[str(name)] = (moment - now).total_seconds()
    depth, failing = number("queue_depth"), number("failing_deliveries")
    return GatewayMetrics(
        gateway=gateway,
        institution=institution,
        stale=stale,
        heartbeat_age_s=(now - last_heartbeat_at).total_seconds() if last_heartbeat_at else None,
        queue_depth=int(depth) if depth is not None else None,
        oldest_undelivered_s=number("oldest_undelivered_age_s"),
        failing_deliveries=int(failing) if failing is not None else None,
        cert_expiry_s=certs,
    )


def database_fleet_source() -> list[GatewayMetrics]:
    """The fleet registry's rows (models/fleet.py), read-only, bounded by
    FLEET_QUERY_TIMEOUT; the database's clock is "now", as for the stale check."""
    from sqlalchemy import text

    from .db import session_factory

    with session_factory()() as session:
        session.execute(text(f"SET LOCAL statement_timeout = '{FLEET_QUERY_TIMEOUT}'"))
        now = session.execute(text("SELECT now()")).scalar_one()
        rows = session.execute(
            text(
                "SELECT gateway_id, institution, stale, last_heartbeat_at, heartbeat "
                "FROM fleet_gateways ORDER BY gateway_id"
            )
        ).all()
        session.rollback()
    return [gateway_metrics(row[0], row[1], row[2], row[3], row[4], now) for row in rows]


def node_registry() -> CollectorRegistry:
    """What GET /metrics shows: every worker's values (multiprocess mode) or, without a
    multiprocess directory (tests, one process), this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def fleet_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: _fleet_source))
    return registry


def forget_dead_workers(directory: str | None = None) -> int:
    """Drop the live gauges of workers that are gone (a restarted worker, a previous run):
    their backlog and pools are no longer anyone's. Counters of dead workers stay (their
    requests did happen). Returns how many processes were forgotten."""
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if not directory:
        return 0
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match:
            pids.add(int(match.group(1)))
    dead = [pid for pid in pids if pid != os.getpid() and not _alive(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return len(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sample(state: Any) -> None:
    """This worker's audit backlog and pool connections into the gauges (app.state's
    audit writer and async pool, the ORM engine's pool once it exists)."""
    audit = getattr(state, "audit", None)
    if audit is not None:
        AUDIT_BACKLOG.set(len(getattr(audit, "_pending", ())))
    pool = getattr(state, "pool", None)
    if pool is not None:
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        DB_POOL.labels("async", "in_use").set(size - idle)
        DB_POOL.labels("async", "idle").set(idle)
        DB_POOL.labels("async", "waiting").set(stats.get("requests_waiting", 0))
    from .db import get_engine  # the engine only if this worker made one

    if get_engine.cache_info().currsize:
        orm = get_engine().pool
        in_use = getattr(orm, "checkedout", lambda: 0)()
        DB_POOL.labels("orm", "in_use").set(in_use)
        DB_POOL.labels("orm", "idle").set(getattr(orm, "checkedin", lambda: 0)())


def route_template(scope: MutableMapping[str, Any]) -> str:
    """The matched route's path template (/api/v1/institutions/{code}/patients/{mrn}),
    else UNMATCHED. FastAPI keeps an included router's routes without its prefix
    (scope["route"].path is /v1/...): the full template is its effective route's, in
    scope["fastapi"]; the route's own path only where there is none (a route of the app)."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path_format", None)
    if not isinstance(path, str):
        path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template, and
    keeps this worker's gauges fresh (a sampler task, started with the first request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._sampler: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in SKIPPED:
            await self.app(scope, receive, send)
            return
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.get_running_loop().create_task(self._sample(scope))
        status = 500
        started = time.perf_counter()

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route, method = route_template(scope), str(scope.get("method", ""))
            LATENCY.labels(method, route).observe(time.perf_counter() - started)
            REQUESTS.labels(method, route, str(status)).inc()

    async def _sample(self, scope: Scope) -> None:
        app = scope.get("app")
        while app is not None:
            try:
                sample(app.state)
            except Exception:  # a gauge is not worth a worker: logged, tried again
                log.exception("sampling the indexer's gauges failed")
            await asyncio.sleep(SAMPLE_EVERY_S)


def _through_gateway(request: Request) -> bool:
    return GATEWAY_HEADER in request.headers


async def metrics_endpoint(request: Request) -> Response:
    if _through_gateway(request):
        return Response(status_code=404)
    sample(request.app.state)
    body = await run_in_threadpool(generate_latest, node_registry())
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def fleet_endpoint(request: Request) -> Response:
    """The fleet gauges; 503 when the registry cannot be read (the scrape fails, and
    TargetDown says so, rather than a fleet that looks empty)."""
    if _through_gateway(request):
        return Response(status_code=404)
    try:
        body = await run_in_threadpool(generate_latest, fleet_registry())
    except Exception:
        log.exception("reading the fleet registry for /metrics/fleet failed")
        return Response("fleet registry unavailable\n", status_code=503)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, fleet_source: FleetSource | None = database_fleet_source) -> None:
    """GET /metrics and /metrics/fleet (not in the OpenAPI schema), and the request
    middleware; the fleet's rows from `fleet_source` unless one was set already. Called
    from create_app; a second call does nothing."""
    if getattr(app.state, "metrics_installed", False):
        return
    app.state.metrics_installed = True
    if _fleet_source is None:
        set_fleet_source(fleet_source)
    forget_dead_workers()
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics/fleet", fleet_endpoint, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics)  # type: ignore[arg-type]


def instrumented_app() -> FastAPI:
    """The indexer's app with its metrics, for `uvicorn --factory` (the monitoring test runs
    the stack's indexer so until create_app installs them itself)."""
    from .main import create_app

    app = create_app()
    install(app)
    return app
