"""PostgreSQL in the redundant topology: two PostgreSQL 15 nodes, each under a Patroni
process, with the leader key in etcd (deploy.stack.services.etcd). Synchronous mode: a
commit returns once the standby has flushed it, and Patroni promotes only the synchronous
standby, so a failover loses no acknowledged transaction. Clients never address a node:
they use the stack's `postgres` port, the proxy's front that follows the primary
(deploy.stack.services.ha_proxy)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ..context import StackContext
from ..errors import PrerequisiteMissing
from ..ha_secrets import ha_secrets
from ..processes import exited
from .base import Service, http_health
from .etcd import MEMBERS, etcd_members
from .ha_proxy import Front, HaProxy
from .postgres import PG_BIN, SERVER_SETTINGS, require_postgres_can_write

PATRONI_BIN = Path("/usr/bin/patroni")  # Debian 12's patroni (3.0.2)
NODES = (1, 2)
# The cluster's name in etcd (its keys under /service/imaging-cloud/), as in compose.
SCOPE = "imaging-cloud"
REPLICATION_USER = "replicator"
API_USER = "patroni"
# How fast a dead primary is replaced: its leader key lives TTL seconds after its last
# renewal; every node runs its loop every LOOP_WAIT seconds, and gives up on etcd or
# PostgreSQL after RETRY_TIMEOUT (Patroni wants TTL >= LOOP_WAIT + 2 * RETRY_TIMEOUT).
TTL_S = 10
LOOP_WAIT_S = 2
RETRY_TIMEOUT_S = 4
# As today's small stack (`initdb` in postgres.Postgres.prepare).
INITDB = [
    {"encoding": "UTF8"},
    {"locale": "C.UTF-8"},
    {"auth-local": "peer"},
    {"auth-host": "scram-sha-256"},
]


def patroni_name(node: int) -> str:
    return f"patroni-{node}"


def member_name(node: int) -> str:
    """The node's name in the cluster (patronictl, pg_stat_replication), as in compose."""
    return f"pg-{node}"


def api_url(ctx: StackContext, node: int) -> str:
    return f"http://127.0.0.1:{ctx.ports[f'patroni_{node}_api']}"


def pg_hba() -> list[str]:
    """What initdb --auth-local=peer --auth-host=scram-sha-256 allows (loopback only), and
    streaming replication for the replication role."""
    return [
        "local all all peer",
        "host all all 127.0.0.1/32 scram-sha-256",
        "local replication all peer",
        f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
    ]


def patroni_config(ctx: StackContext, node: int, node_dir: Path) -> dict[str, Any]:
    """Patroni's configuration of node `node` (written as JSON, which is YAML)."""
    secrets = ha_secrets(ctx)
    api = f"127.0.0.1:{ctx.ports[f'patroni_{node}_api']}"
    pg = f"127.0.0.1:{ctx.ports[f'pg_node_{node}']}"
    return {
        "scope": SCOPE,
        "name": member_name(node),
        "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
        "restapi": {
            "listen": api,
            "connect_address": api,
            "authentication": {"username": API_USER, "password": secrets["patroni_api"]},
        },
        "etcd3": {
            "hosts": [f"127.0.0.1:{ctx.ports[f'etcd_{n}_client']}" for n in MEMBERS],
            "protocol": "http",
        },
        "bootstrap": {
            # Written to etcd by the node that bootstraps the cluster, then shared by both.
            "dcs": {
                "ttl": TTL_S,
                "loop_wait": LOOP_WAIT_S,
                "retry_timeout": RETRY_TIMEOUT_S,
                # A commit waits for the synchronous standby, and only it may be promoted.
                # Not strict: with the standby gone the primary goes on alone (and then
                # no node may take over until the standby has caught up again).
                "synchronous_mode": True,
                "synchronous_mode_strict": False,
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": dict(SERVER_SETTINGS) | {"synchronous_commit": "on"},
                },
            },
            "initdb": INITDB,
        },
        "postgresql": {
            "listen": pg,
            "connect_address": pg,
            "data_dir": str(node_dir / "data"),
            "bin_dir": str(PG_BIN),
            "pgpass": str(node_dir / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": secrets["postgres_superuser"]},
                "replication": {
                    "username": REPLICATION_USER,
                    "password": secrets["pg_replication"],
                },
            },
            "parameters": {"unix_socket_directories": str(node_dir / "run")},
            "pg_hba": pg_hba(),
            # A former primary that pg_rewind cannot bring back is cloned again instead.
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
            "basebackup": [{"checkpoint": "fast"}],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


class PatroniNode(Service):
    """One PostgreSQL node under Patroni, which starts, stops, promotes and rewinds its
    PostgreSQL. Patroni starts PostgreSQL in a session of its own: it outlives a Patroni
    crash (a restarted Patroni adopts it), and stopping Patroni's process group does not
    reach it. So `kill` SIGKILLs both, and stop_postgres_left_behind stops one whose
    Patroni is gone (the launcher's `down` should call it after stopping the node)."""

    name = "patroni-1"
    ports = ("patroni_1_api", "pg_node_1")
    # Patroni stops PostgreSQL (a fast shutdown) on SIGTERM before it exits.
    stop_timeout_s = 60.0

    def __init__(self, ctx: StackContext, node: int = 1) -> None:
        super().__init__(ctx)
        if node not in NODES:
            raise ValueError(f"PostgreSQL node {node}: the cluster has nodes {NODES}")
        self.node = node
        self.name = patroni_name(node)
        self.ports = (f"patroni_{node}_api", f"pg_node_{node}")

    @property
    def node_dir(self) -> Path:
        return self.ctx.state / "pg-ha" / f"node-{self.node}"

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    @property
    def config_file(self) -> Path:
        return self.node_dir / "patroni.yml"

    @property
    def api_url(self) -> str:
        return api_url(self.ctx, self.node)

    def user(self) -> str:
        return "postgres"

    def prepare(self) -> None:
        for binary in (PATRONI_BIN, PG_BIN / "postgres"):
            if not binary.exists():
                raise PrerequisiteMissing(self.name, f"{binary} not found: run make install")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PrerequisiteMissing(self.name, "system user 'postgres' missing") from exc
        top = self.ctx.state / "pg-ha"
        for path in (top, self.node_dir, self.node_dir / "run"):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            path.chmod(0o700)
        require_postgres_can_write(self.name, self.node_dir)
        config = json.dumps(patroni_config(self.ctx, self.node, self.node_dir), indent=1)
        self.config_file.touch(mode=0o600, exist_ok=True)
        os.chown(self.config_file, pw.pw_uid, pw.pw_gid)
        self.config_file.chmod(0o600)
        self.config_file.write_text(config)

    def argv(self) -> list[str]:
        return [str(PATRONI_BIN), str(self.config_file)]

    def env(self) -> dict[str, str]:
        # Patroni runs on Debian's python3 and its packages, not the stack's virtualenv.
        return {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}

    def health(self) -> str | None:
        """Healthy when Patroni runs and its PostgreSQL accepts connections (either role)."""
        return http_health(f"{self.api_url}/health")

    def status(self) -> dict[str, Any] | None:
        """Patroni's view of this node (GET /patroni: role, state, timeline), None if down."""
        try:
            response = httpx.get(f"{self.api_url}/patroni", timeout=3.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code in (200, 503) else None

    def postmaster_pid(self) -> int | None:
        """The pid of this node's running PostgreSQL (its postmaster.pid, checked against
        the process's command line: a stale file's pid may be anyone's), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.data_dir).encode() in argv and not exited(pid) else None

    def signal_postgres(self, sig: int, timeout_s: float = 10.0) -> bool:
        """Send `sig` to this node's PostgreSQL and its backends (the process group Patroni
        started it in) and wait up to timeout_s for it to end; SIGKILL if it does not.
        True if one was running. For a PostgreSQL a killed Patroni left behind."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            group = os.getpgid(pid)
            if group in (0, 1, os.getpgrp()):
                os.kill(pid, sig)
            else:
                os.killpg(group, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not exited(pid):
            time.sleep(0.1)
        if not exited(pid):
            os.killpg(group, signal.SIGKILL)
        return True

    def stop_postgres_left_behind(self) -> bool:
        """A fast shutdown (SIGINT) of a PostgreSQL whose Patroni is gone; True if one ran."""
        if self.pid() is not None:
            return False  # Patroni runs and stops its PostgreSQL itself
        return self.signal_postgres(signal.SIGINT, timeout_s=self.stop_timeout_s)

    def kill(self) -> None:
        """Power loss on this node (resilience drills): Patroni and PostgreSQL SIGKILLed."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)  # its own session (processes.spawn)
        self.signal_postgres(signal.SIGKILL)
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not exited(pid):
                time.sleep(0.1)


def patroni_nodes(ctx: StackContext) -> list[PatroniNode]:
    return [PatroniNode(ctx, node) for node in NODES]


def postgres_ha_services(
    ctx: StackContext, *, s3_front: bool = True, extra_fronts: Sequence[Front] = ()
) -> list[Service]:
    """The HA topology's PostgreSQL in start order: three etcd members (one group), the two
    Patroni nodes (one group), then the proxy, whose `postgres` front follows the primary
    and which provisions roles and databases through it as the small stack does. With
    s3_front the proxy also fronts the S3 nodes on `weed_s3` (ha_proxy.weed_s3_front);
    extra_fronts are further ha_proxy.Front sections of the same proxy."""
    proxy = HaProxy(ctx, s3_front=s3_front, extra_fronts=extra_fronts)
    return [*etcd_members(ctx), *patroni_nodes(ctx), proxy]
