"""Monitoring (#15): a real Prometheus (Debian's) that scrapes every service of the stack,
and the exporters of the two components without metrics of their own: PostgreSQL
(prometheus-postgres-exporter, as a least-privilege role in pg_monitor) and nginx
(prometheus-nginx-exporter, reading the gateway's stub_status on its loopback listener).

What is trusted, and why:
- Everything listens on 127.0.0.1 only, like the rest of the stack; nothing here is behind
  the gateway (the gateway proxies no /metrics).
- The three processes run as Debian's `prometheus` system user with no supplementary
  groups and no way to gain privileges (setpriv --clear-groups --no-new-privs). Their home,
  var/.../prometheus/, is that user's, 0700, like every other directory of the state.
- The credentials Prometheus scrapes the Orthancs with (their HTTP users' passwords) are in
  files of their own (0600, the prometheus user), named by `basic_auth.password_file`:
  never in prometheus.yml, the command line or the environment.
- The PostgreSQL exporter logs in as `monitoring`: LOGIN, pg_monitor (read-only statistics),
  at most 3 connections, no grant on any database of the stack beyond what PUBLIC has on
  `postgres`. Its password is derived from the superuser's (HMAC, so it reveals nothing of
  it) unless the stack's secrets hold `db_monitoring`; it reaches the exporter through its
  environment (DATA_SOURCE_NAME), readable by root and the prometheus user only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from ..context import StackContext
from ..errors import PrerequisiteMissing
from .base import Service, http_health
from .central import central_nodes
from .indexer import indexer_nodes
from .orthanc import EdgeA, EdgeB
from .orthanc_base import OrthancService
from .postgres import connect_superuser
from .seaweedfs_cluster import seaweedfs_nodes

PROMETHEUS = Path("/usr/bin/prometheus")
POSTGRES_EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")
NGINX_EXPORTER = Path("/usr/bin/prometheus-nginx-exporter")
SETPRIV = Path("/usr/bin/setpriv")
RUN_AS = "prometheus"  # Debian's system user of the prometheus package
MONITORING_ROLE = "monitoring"
# The gateway's stub_status listener (loopback; deploy/gateway/nginx.conf.template).
GATEWAY_STATUS_PORT = "gateway_status"
STUB_STATUS_PATH = "/stub_status"
RULES = Path("deploy/prometheus/alerts.yml")  # in the repository
RETENTION = "15d"


def as_service_user(argv: list[str]) -> list[str]:
    """argv run as RUN_AS with its own group and no supplementary groups."""
    return [
        str(SETPRIV),
        f"--reuid={RUN_AS}",
        f"--regid={RUN_AS}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *argv,
    ]


def service_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(RUN_AS)
    except KeyError as exc:
        raise PrerequisiteMissing("prometheus", f"system user {RUN_AS!r} missing") from exc
    return entry.pw_uid, entry.pw_gid


def write_owned(path: Path, text: str, owner: tuple[int, int]) -> Path:
    """A file only `owner` (and root) reads: created 0600 and chowned before any content."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    os.chown(path, *owner)
    path.write_text(text)
    return path


def owned_dir(path: Path, owner: tuple[int, int]) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    os.chown(path, *owner)
    return path


def monitoring_password(secrets: dict[str, str]) -> str:
    """The monitoring role's password: the stack's `db_monitoring` secret when it has one,
    else HMAC-SHA256 of a fixed label under the superuser's password (whoever holds that
    can do anything the monitoring role can; the derived value does not reveal it)."""
    if secrets.get("db_monitoring"):
        return secrets["db_monitoring"]
    key = secrets["postgres_superuser"].encode()
    return hmac.new(key, b"imgcloud monitoring role", hashlib.sha256).hexdigest()[:32]


def provision_monitoring_role(ctx: StackContext) -> None:
    """The exporter's role: LOGIN, pg_monitor, 3 connections at most (idempotent)."""
    role = sql.Identifier(MONITORING_ROLE)
    password = sql.Literal(monitoring_password(ctx.secrets))
    with connect_superuser(ctx) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITORING_ROLE,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(
                verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "CONNECTION LIMIT 3 PASSWORD {}"
            ).format(role, password)
        )
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(role))


def _target(address: str, instance: str, **labels: str) -> dict[str, Any]:
    return {"targets": [address], "labels": {"instance": instance, **labels}}


def scrape_jobs(
    ctx: StackContext,
    password_files: dict[str, Path],
    *,
    nginx: bool,
    keycloak_metrics: bool = True,
) -> list[dict[str, Any]]:
    """Every scrape job of the stack. `password_files` maps an Orthanc service name to the
    file holding its HTTP user's password."""
    local = "127.0.0.1:{}".format
    p = ctx.ports
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "prometheus",
            "static_configs": [_target(local(p["prometheus"]), "prometheus")],
        },
        {
            "job_name": "indexer",
            "static_configs": [_target(local(p[n.port_name]), n.name) for n in indexer_nodes(ctx)],
        },
        # The fleet registry, read from the database at scrape time: every node gives the
        # same values, and the rules take `max without (instance)` (deploy/prometheus).
        {
            "job_name": "indexer-fleet",
            "metrics_path": "/metrics/fleet",
            "static_configs": [_target(local(p[n.port_name]), n.name) for n in indexer_nodes(ctx)],
        },
    ]
    orthancs: list[tuple[OrthancService, str, dict[str, str]]] = [
        (node, "orthanc-central", {}) for node in central_nodes(ctx)
    ] + [
        (edge, f"orthanc-{edge.name}", {"institution": edge.institution})
        for edge in (EdgeA(ctx), EdgeB(ctx))
    ]
    by_job: dict[str, dict[str, Any]] = {}
    for svc, job, labels in orthancs:
        entry = by_job.setdefault(
            job,
            {
                "job_name": job,
                "metrics_path": "/tools/metrics-prometheus",
                # Orthanc stamps each value with the time it was set; the plugin sets its
                # own every few seconds: the scrape's time is the one that counts.
                "honor_timestamps": False,
                "basic_auth": {
                    "username": svc.credentials[0],
                    "password_file": str(password_files[svc.name]),
                },
                "static_configs": [],
            },
        )
        entry["static_configs"].append(_target(local(p[svc.http_port]), svc.name, **labels))
    jobs += by_job.values()
    weed = (
        [_target(local(p[n.metrics_port_name]), n.name) for n in seaweedfs_nodes(ctx)]
        if ctx.settings.ha
        else [_target(local(p["weed_metrics"]), "seaweedfs")]
    )
    jobs.append({"job_name": "seaweedfs", "static_configs": weed})
    if keycloak_metrics:
        mgmt = ["keycloak_mgmt", "keycloak_2_mgmt"] if ctx.settings.ha else ["keycloak_mgmt"]
        jobs.append(
            {
                "job_name": "keycloak",
                "metrics_path": "/auth/metrics",  # the management port, --http-relative-path
                "static_configs": [_target(local(p[m]), m.replace("_mgmt", "")) for m in mgmt],
            }
        )
    jobs.append(
        {
            "job_name": "postgres",
            "static_configs": [_target(local(p["postgres_exporter"]), "postgres")],
        }
    )
    if nginx:
        jobs.append(
            {
                "job_name": "nginx",
                "static_configs": [_target(local(p["nginx_exporter"]), "gateway")],
            }
        )
    return jobs


def prometheus_config(jobs: list[dict[str, Any]], rule_files: list[str], interval_s: int) -> str:
    """prometheus.yml: the jobs, the rules, one scrape interval for all."""
    config = {
        "global": {
            "scrape_interval": f"{interval_s}s",
            "scrape_timeout": f"{min(interval_s, 10)}s",
            "evaluation_interval": f"{interval_s}s",
        },
        "rule_files": rule_files,
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


class Prometheus(Service):
    name = "prometheus"
    ports = ("prometheus",)
    stop_timeout_s = 30.0
    scrape_interval_s = 15  # tests set a shorter one

    def __init__(self, ctx: StackContext, *, nginx: bool = True) -> None:
        super().__init__(ctx)
        self.nginx = nginx

    @property
    def home(self) -> Path:
        return self.ctx.state / "prometheus"

    @property
    def url(self) -> str:
        return self.ctx.http("prometheus")

    def prepare(self) -> None:
        if not PROMETHEUS.exists() or not SETPRIV.exists():
            raise PrerequisiteMissing(self.name, f"{PROMETHEUS} or {SETPRIV} not found")
        owner = service_user()
        owned_dir(self.home, owner)
        for sub in ("data", "secrets", "rules"):
            owned_dir(self.home / sub, owner)
        files = {}
        for svc in (*central_nodes(self.ctx), EdgeA(self.ctx), EdgeB(self.ctx)):
            files[svc.name] = write_owned(
                self.home / "secrets" / f"{svc.name}.password", svc.credentials[1], owner
            )
        rules = write_owned(
            self.home / "rules" / RULES.name,
            (self.ctx.settings.repo_root / RULES).read_text(),
            owner,
        )
        jobs = scrape_jobs(self.ctx, files, nginx=self.nginx)
        write_owned(
            self.config_file,
            prometheus_config(jobs, [str(rules)], self.scrape_interval_s),
            owner,
        )

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    def argv(self) -> list[str]:
        return as_service_user(
            [
                str(PROMETHEUS),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address=127.0.0.1:{self.ctx.ports['prometheus']}",
                "--log.level=warn",
            ]
        )

    def health(self) -> str | None:
        return http_health(f"{self.url}/-/ready")


class PostgresExporter(Service):
    name = "postgres-exporter"
    ports = ("postgres_exporter",)

    def prepare(self) -> None:
        if not POSTGRES_EXPORTER.exists():
            raise PrerequisiteMissing(self.name, f"{POSTGRES_EXPORTER} not found")
        service_user()
        provision_monitoring_role(self.ctx)  # PostgreSQL is up: the stack started before

    def argv(self) -> list[str]:
        return as_service_user(
            [
                str(POSTGRES_EXPORTER),
                f"--web.listen-address=127.0.0.1:{self.ctx.ports['postgres_exporter']}",
                "--log.level=warn",
            ]
        )

    def env(self) -> dict[str, str]:
        dsn = (
            f"postgresql://{MONITORING_ROLE}:{monitoring_password(self.ctx.secrets)}"
            f"@127.0.0.1:{self.ctx.ports['postgres']}/postgres?sslmode=disable"
            "&connect_timeout=3"
        )
        return {"DATA_SOURCE_NAME": dsn}

    def health(self) -> str | None:
        def connected(response) -> str | None:
            return None if "\npg_up 1" in response.text else "pg_up is not 1"

        return http_health(f"{self.ctx.http('postgres_exporter')}/metrics", check=connected)


class NginxExporter(Service):
    name = "nginx-exporter"
    ports = ("nginx_exporter",)

    def __init__(self, ctx: StackContext, status_port: int) -> None:
        super().__init__(ctx)
        self.status_port = status_port

    def prepare(self) -> None:
        if not NGINX_EXPORTER.exists():
            raise PrerequisiteMissing(self.name, f"{NGINX_EXPORTER} not found")
        service_user()

    def argv(self) -> list[str]:
        return as_service_user(
            [
                str(NGINX_EXPORTER),
                f"-nginx.scrape-uri=http://127.0.0.1:{self.status_port}{STUB_STATUS_PATH}",
                f"-web.listen-address=127.0.0.1:{self.ctx.ports['nginx_exporter']}",
                "-nginx.retries=10",
                "-nginx.retry-interval=1s",
                "-nginx.timeout=3s",
            ]
        )

    def health(self) -> str | None:
        def scraped(response) -> str | None:
            return None if "\nnginx_up 1" in response.text else "nginx_up is not 1"

        return http_health(f"{self.ctx.http('nginx_exporter')}/metrics", check=scraped)


def monitoring_services(ctx: StackContext) -> list[Service]:
    """The exporters, then Prometheus, in start order (after the rest of the stack). nginx's
    exporter reads the gateway's stub_status listener (port gateway_status)."""
    return [
        PostgresExporter(ctx),
        NginxExporter(ctx, ctx.ports[GATEWAY_STATUS_PORT]),
        Prometheus(ctx),
    ]


def remove_data(ctx: StackContext) -> None:
    """Drop Prometheus's time series (tests that want a fresh start)."""
    shutil.rmtree(ctx.state / "prometheus" / "data", ignore_errors=True)
