"""The HA topology's local TCP proxy (HAProxy): clients keep the small stack's addresses.

- `postgres` front: the PostgreSQL node whose Patroni answers 200 on /primary (the
  standard Patroni + HAProxy pattern). When a node stops being the primary, its sessions
  are cut (on-marked-down shutdown-sessions), so no client goes on talking to a demoted or
  dead node; clients reconnect to the same address and reach the new primary.
- `weed_s3` front (weed_s3_front; HaProxy's s3_front): any live S3 node, checked by HTTP
  on `/` (an S3 endpoint answers an anonymous GET / with 403 or 200: below 500, it serves).

Everything binds 127.0.0.1. A stats page and a health URI listen on `ha_proxy_stats`.
HAProxy runs in the foreground (-db) and writes its warnings (a server down or up, a front
with no server left) to its log; it does not log connections."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ..context import StackContext
from ..errors import PrerequisiteMissing, StackError
from .base import Service, http_health
from .postgres import connect_superuser, migrate_central_tables, provision_databases

HAPROXY_BIN = Path("/usr/sbin/haproxy")  # Debian 12's haproxy (2.6)
CHECK_TIMEOUT_S = 10
# How often a backend is checked, and how many results flip it (down after FALL failures,
# up after RISE successes): a dead primary is taken out within about 2 s.
CHECK_INTER = "1s"
CHECK_FALL = 2
CHECK_RISE = 1
S3_RISE = 2
# PostgreSQL sessions may idle for long (Orthanc's index plugin, pools): the proxy must not
# cut them; TCP keepalives find a vanished peer.
PG_IDLE_TIMEOUT = "24h"
S3_IDLE_TIMEOUT = "5m"


@dataclass(frozen=True)
class Backend:
    name: str
    port: int
    check_port: int | None = None  # None: the health check goes to `port` itself


@dataclass(frozen=True)
class Front:
    """One `listen` section: a loopback port, its backends and how they are checked."""

    name: str
    port: int
    backends: tuple[Backend, ...]
    check: tuple[str, ...]  # the option httpchk / http-check lines
    balance: str
    idle_timeout: str
    rise: int
    server_options: str = ""

    def section(self) -> list[str]:
        lines = [
            f"listen {self.name}",
            f"    bind 127.0.0.1:{self.port}",
            "    mode tcp",
            f"    balance {self.balance}",
            f"    timeout client {self.idle_timeout}",
            f"    timeout server {self.idle_timeout}",
            "    option clitcpka",
            "    option srvtcpka",
            *(f"    {line}" for line in self.check),
            f"    default-server inter {CHECK_INTER} fastinter 500ms downinter {CHECK_INTER} "
            f"fall {CHECK_FALL} rise {self.rise}"
            + (f" {self.server_options}" if self.server_options else ""),
        ]
        for backend in self.backends:
            check = " check" + (f" port {backend.check_port}" if backend.check_port else "")
            lines.append(f"    server {backend.name} 127.0.0.1:{backend.port}{check}")
        return lines


def postgres_front(ctx: StackContext) -> Front:
    """`postgres`: the node whose Patroni says it is the primary (GET /primary is 200 on
    the leader only). `balance first`: were two ever up at once, all goes to one."""
    return Front(
        name="postgres",
        port=ctx.ports["postgres"],
        backends=tuple(
            Backend(f"pg{n}", ctx.ports[f"pg_node_{n}"], ctx.ports[f"patroni_{n}_api"])
            for n in (1, 2)
        ),
        # OPTIONS is Patroni's GET without the body (its own example's check): a GET's
        # body, cut off by HAProxy once it has the status, left a traceback in Patroni's log
        # every few seconds.
        check=("option httpchk OPTIONS /primary", "http-check expect status 200"),
        balance="first",
        idle_timeout=PG_IDLE_TIMEOUT,
        rise=CHECK_RISE,
        server_options="on-marked-down shutdown-sessions",
    )


def weed_s3_front(ctx: StackContext) -> Front:
    """`weed_s3`: every S3 node that answers HTTP on `/` below 500, round robin; a
    connection refused by one is sent to the other (option redispatch, in defaults)."""
    return Front(
        name="weed_s3",
        port=ctx.ports["weed_s3"],
        backends=tuple(Backend(f"s3_{n}", ctx.ports[f"weed_s3_node_{n}"]) for n in (1, 2)),
        check=("option httpchk GET /", "http-check expect rstatus ^[1-4][0-9][0-9]$"),
        balance="roundrobin",
        idle_timeout=S3_IDLE_TIMEOUT,
        rise=S3_RISE,
        server_options="on-marked-down shutdown-sessions",
    )


def haproxy_config(fronts: Sequence[Front], stats_port: int) -> str:
    """HAProxy's whole configuration: `fronts` and the stats/health listener."""
    lines = [
        "global",
        "    maxconn 4000",
        "",
        "defaults",
        "    timeout connect 2s",
        "    timeout check 2s",
        "    retries 2",
        "    option redispatch",
        "",
    ]
    for front in fronts:
        lines += [*front.section(), ""]
    lines += [
        "listen stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    mode http",
        "    timeout client 10s",
        "    monitor-uri /health",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "",
    ]
    return "\n".join(lines)


class HaProxy(Service):
    """The proxy process. Once its `postgres` front reaches a read-write primary, it
    provisions PostgreSQL through that front exactly as the small stack's Postgres does."""

    name = "ha-proxy"
    # SIGTERM is HAProxy's immediate stop (SIGUSR1 would wait for sessions to end).
    stop_signal = signal.SIGTERM
    stop_timeout_s = 10.0
    provision_when_running = True

    def __init__(
        self, ctx: StackContext, *, s3_front: bool = True, extra_fronts: Sequence[Front] = ()
    ) -> None:
        super().__init__(ctx)
        self.fronts = [postgres_front(ctx)] + ([weed_s3_front(ctx)] if s3_front else [])
        self.fronts += list(extra_fronts)
        self.ports = (*(front.name for front in self.fronts), "ha_proxy_stats")

    @property
    def config_file(self) -> Path:
        return self.ctx.state / "ha-proxy" / "haproxy.cfg"

    def config(self) -> str:
        return haproxy_config(self.fronts, self.ctx.ports["ha_proxy_stats"])

    def prepare(self) -> None:
        if not HAPROXY_BIN.exists():
            raise PrerequisiteMissing(self.name, f"{HAPROXY_BIN} not found: run make install")
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config())
        checked = subprocess.run(
            [str(HAPROXY_BIN), "-c", "-q", "-f", str(self.config_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=CHECK_TIMEOUT_S,
        )
        if checked.returncode != 0:
            raise StackError(
                self.name, f"haproxy -c rejects {self.config_file}: {checked.stderr.strip()}"
            )

    def argv(self) -> list[str]:
        return [str(HAPROXY_BIN), "-db", "-f", str(self.config_file)]

    def health(self) -> str | None:
        """Healthy when HAProxy answers and its `postgres` front reaches a primary."""
        problem = http_health(f"{self.ctx.http('ha_proxy_stats')}/health")
        if problem is not None:
            return problem
        try:
            with connect_superuser(self.ctx) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error as exc:
            return f"postgres front: {type(exc).__name__}"
        if row is None or row[0]:
            return "postgres front: reached a standby"
        return None

    def after_healthy(self) -> None:
        """Roles, databases, grants and central's tables, on the primary via the front."""
        provision_databases(self.ctx)
        migrate_central_tables(self.ctx, self.name, self.log)
