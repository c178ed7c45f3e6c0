"""SeaweedFS as a cluster, for the HA topology (IMGCLOUD_TOPOLOGY=ha, docs/ha.md).

The small stack's one `weed server` process (seaweedfs.py) becomes separate processes, each
a service of its own on loopback:
- 3 masters in one raft (`-peers`): a leader is elected while two of the three are up.
- 3 volume servers; every volume is kept on two of them (replication 001: one more copy on
  another server of the same rack). SeaweedFS writes every copy before it answers (W = N,
  R = 1), so a volume with a copy on a lost server takes no writes; with three servers the
  master puts new writes on volumes whose two copies are both alive (growing new ones on
  the two survivors when needed). With two servers, losing one stops every write.
- 2 filers on one store: the postgres2 tables in the stack's PostgreSQL (port `postgres`,
  in the HA topology the proxy to the current Patroni primary), as the small stack's.
- 2 S3 nodes, with the small stack's identities, each talking to both filers. Clients reach
  them through the local HAProxy's front on `weed_s3` (config_proxy), never directly.

Every node reads the small stack's security.toml (JWT signing for the volume servers,
mutual TLS with the stack's CA on every gRPC port); the masters' and filers' HTTP APIs are
off (a master's /dir/assign would hand any caller a write JWT). The bucket, the probe object
and the bucket's fsync rule are set once for the cluster, after the first S3 node is healthy.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import psycopg

from ..context import S3_BUCKET, StackContext
from ..errors import ServiceUnhealthy
from ..pki import issue_leaf
from .base import Service, http_health
from .seaweedfs import (
    GRPC_COMMON_NAME,
    fsync_command,
    fsync_rule_applied,
    private_tmp_argv,
    provision_buckets,
    require_weed,
    run_weed_shell,
    s3_client,
    s3_health,
    s3_identities,
    security_toml,
    write_private,
)
from .seaweedfs_filer import DATABASE, POSTGRES2, filer_toml

REPLICATION = "001"  # one more copy, on another volume server of the same rack
MASTER_NODES = (1, 2, 3)
VOLUME_NODES = (1, 2, 3)
FILER_NODES = (1, 2)
S3_NODES = (1, 2)
# Seconds a volume server keeps running after SIGTERM with its heartbeats stopped, so the
# master sends no new writes to it (SeaweedFS's default is 10; loopback needs less).
PRE_STOP_S = 3
# How long followers wait for the leader's heartbeat (every 300 ms) before they elect
# another: SeaweedFS's default of 10 s meant 10-20 s without a leader; loopback needs less.
ELECTION_TIMEOUT = "3s"
# postgres2 keeps every entry outside a bucket's own table in this one (SeaweedFS's name).
FILER_TABLE = "filemeta"


def port_name(kind: str, node: int) -> str:
    """The HTTP port name of node `node` of `kind` (master, volume, filer, s3): node 1 of
    the master, volume and filer keeps the small stack's name; S3 nodes have their own
    (the small stack's `weed_s3` is the proxy's front in the HA topology)."""
    if kind == "s3":
        return f"weed_s3_node_{node}"
    return f"weed_{kind}" if node == 1 else f"weed_{kind}_{node}"


def address(ctx: StackContext, name: str) -> str:
    """SeaweedFS's `ip:port.grpcPort` for a node whose gRPC port is not port + 10000."""
    return f"127.0.0.1:{ctx.ports[name]}.{ctx.ports[name + '_grpc']}"


def masters(ctx: StackContext) -> str:
    """Every master, comma-separated (`-peers`, `-master`)."""
    return ",".join(address(ctx, port_name("master", n)) for n in MASTER_NODES)


def filers(ctx: StackContext) -> str:
    """Every filer, comma-separated (`weed s3 -filer`)."""
    return ",".join(address(ctx, port_name("filer", n)) for n in FILER_NODES)


def cluster_home(ctx: StackContext) -> Path:
    return ctx.state / "seaweedfs-ha"


def config_dir(ctx: StackContext) -> Path:
    """security.toml, filer.toml and s3.json, shared by every node of the cluster."""
    return cluster_home(ctx) / "config"


def write_config(ctx: StackContext) -> None:
    """The cluster's configuration files, each private (idempotent)."""
    conf = config_dir(ctx)
    conf.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, key = issue_leaf(ctx.pki["ca_cert"].parent, "seaweedfs", GRPC_COMMON_NAME)
    write_private(
        conf / "security.toml",
        security_toml(ctx.secrets, str(ctx.pki["ca_cert"]), str(cert), str(key)),
    )
    write_private(
        conf / "filer.toml",
        filer_toml(POSTGRES2, password=ctx.secrets["db_seaweedfs"], port=ctx.ports["postgres"]),
    )
    write_private(conf / "s3.json", s3_identities(ctx.secrets))


def shell_argv(ctx: StackContext, filer_node: int = 1) -> list[str]:
    """`weed shell` against every master and one filer, over mutual-TLS gRPC."""
    return [
        str(ctx.settings.venv_bin / "weed"),
        f"-config_dir={config_dir(ctx)}",
        "shell",
        f"-master={masters(ctx)}",
        f"-filer={address(ctx, port_name('filer', filer_node))}",
    ]


def master_status(ctx: StackContext, node: int) -> dict | None:
    """A master's /cluster/status ({"IsLeader": ..., "Leader": ..., "Peers": [...]}),
    None if it does not answer. `-disableHttp` leaves this read-only page on."""
    url = f"{ctx.http(port_name('master', node))}/cluster/status"
    try:
        response = httpx.get(url, timeout=3.0)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def raft_leader(ctx: StackContext) -> int | None:
    """The master node that says it leads the raft, None if none does."""
    for node in MASTER_NODES:
        status = master_status(ctx, node)
        if status and status.get("IsLeader") is True:
            return node
    return None


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return True
    except OSError:
        return False


class WeedNode(Service):
    """One `weed <kind>` process of the cluster, /tmp private as in seaweedfs.py."""

    kind = ""
    stop_timeout_s = 40.0

    def __init__(self, ctx: StackContext, node: int = 1) -> None:
        super().__init__(ctx)
        if node < 1:
            raise ValueError(f"{self.kind} node {node}: nodes count from 1")
        self.node = node
        self.name = f"seaweedfs-{self.kind}-{node}"
        self.port_name = port_name(self.kind, node)
        self.ports = (self.port_name, self.port_name + "_grpc")

    @property
    def home(self) -> Path:
        return cluster_home(self.ctx) / f"{self.kind}-{self.node}"

    @property
    def port(self) -> int:
        return self.ctx.ports[self.port_name]

    @property
    def metrics_port_name(self) -> str:
        return self.port_name + "_metrics"

    @property
    def grpc_port(self) -> int:
        return self.ctx.ports[self.port_name + "_grpc"]

    def prepare(self) -> None:
        require_weed(self.ctx, self.name)
        for path in (cluster_home(self.ctx), self.home, self.home / "tmp"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)
        write_config(self.ctx)

    def argv(self) -> list[str]:
        weed = [
            str(self.ctx.settings.venv_bin / "weed"),
            "-logtostderr",
            f"-config_dir={config_dir(self.ctx)}",
            self.kind,
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-port={self.port}",
            f"-port.grpc={self.grpc_port}",
            # its Prometheus metrics, on loopback (deploy/stack/services/prometheus.py)
            f"-metricsPort={self.ctx.ports[self.metrics_port_name]}",
            "-metricsIp=127.0.0.1",
            *self.weed_args(),
        ]
        return private_tmp_argv(self.home / "tmp", weed)

    def weed_args(self) -> list[str]:
        raise NotImplementedError


class WeedMaster(WeedNode):
    kind = "master"

    def weed_args(self) -> list[str]:
        return [
            "-disableHttp",
            f"-mdir={self.home}",
            f"-peers={masters(self.ctx)}",
            f"-defaultReplication={REPLICATION}",
            f"-electionTimeout={ELECTION_TIMEOUT}",
            "-volumeSizeLimitMB=512",
            "-telemetry=false",
            # A master that came back with its saved raft state took the leadership again
            # and no write was acknowledged in the 15 s watched; started without it, it
            # joined as a follower with no pause (one run each). The volume ids come back
            # in the volume servers' heartbeats.
            "-resumeState=false",
        ]

    def health(self) -> str | None:
        """Healthy when its gRPC port answers and it knows the raft's leader."""
        if not _tcp_open(self.grpc_port):
            return f"gRPC port {self.grpc_port} closed"
        status = master_status(self.ctx, self.node)
        if status is None:
            return "no /cluster/status"
        return None if status.get("Leader") else "no raft leader known"


class WeedVolume(WeedNode):
    kind = "volume"

    def weed_args(self) -> list[str]:
        return [
            f"-dir={self.home / 'data'}",
            f"-master={masters(self.ctx)}",
            "-max=0",  # as many volumes as the disk holds
            f"-preStopSeconds={PRE_STOP_S}",
        ]

    def prepare(self) -> None:
        super().prepare()
        (self.home / "data").mkdir(mode=0o700, exist_ok=True)

    def health(self) -> str | None:
        """/healthz answers 200 once it heartbeats to the leader (503 before)."""
        return http_health(f"{self.ctx.http(self.port_name)}/healthz")


class WeedFiler(WeedNode):
    kind = "filer"

    def weed_args(self) -> list[str]:
        return [
            "-disableHttp",
            f"-master={masters(self.ctx)}",
            f"-localSocket={self.home / 'tmp' / 'filer.sock'}",
        ]

    def start(self) -> int:
        # Two filers creating postgres2's table at once on an empty database can both run
        # CREATE TABLE IF NOT EXISTS, and one then fails (a unique violation in PostgreSQL's
        # catalog) and exits: a second filer waits until the table is there.
        if self.node > 1 and not self.store_ready():
            WeedFiler(self.ctx, 1).wait_healthy(self.ctx.settings.start_timeout_s)
        return super().start()

    def store_ready(self) -> bool:
        """Whether the filer's table exists in its PostgreSQL database."""
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.ctx.ports["postgres"],
                user=DATABASE,
                password=self.ctx.secrets["db_seaweedfs"],
                dbname=DATABASE,
                connect_timeout=3,
            ) as conn:
                row = conn.execute("SELECT to_regclass(%s)", (FILER_TABLE,)).fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] is not None

    def health(self) -> str | None:
        """Healthy when a `weed shell` through it lists the filer's root."""
        if not _tcp_open(self.grpc_port):
            return f"gRPC port {self.grpc_port} closed"
        try:
            output = run_weed_shell(
                shell_argv(self.ctx, self.node), "fs.ls /", cwd=self.home, name=self.name
            )
        except ServiceUnhealthy as exc:
            return exc.message
        if "error" in output.lower() or "rpc" in output.lower():
            last = output.strip().splitlines()[-1:] or ["no output"]
            return f"fs.ls / through it: {last[0][:200]}"
        return None


class WeedS3Node(WeedNode):
    kind = "s3"
    # The bucket, the probe and the fsync rule reach a stack left running too (node 1).
    provision_when_running = True

    def weed_args(self) -> list[str]:
        return [
            f"-filer={filers(self.ctx)}",
            f"-config={config_dir(self.ctx) / 's3.json'}",
            f"-localSocket={self.home / 'tmp' / 's3.sock'}",
            "-port.iceberg=0",
            "-port.lance=0",
        ]

    @property
    def endpoint(self) -> str:
        return self.ctx.http(self.port_name)

    def client(self):
        return s3_client(
            self.endpoint, self.ctx.secrets["s3_access_key"], self.ctx.secrets["s3_secret_key"]
        )

    def health(self) -> str | None:
        return s3_health(self.client())

    def after_healthy(self) -> None:
        """Node 1 sets up the bucket, the probe and the fsync rule, once for the cluster."""
        if self.node != 1:
            return
        provision_buckets(self.client())
        self.configure_fsync(True)

    def configure_fsync(self, fsync: bool) -> None:
        output = ""
        for filer in FILER_NODES:  # through any live filer (they share the store)
            output = run_weed_shell(
                shell_argv(self.ctx, filer),
                fsync_command(S3_BUCKET, fsync),
                cwd=self.home,
                name=self.name,
            )
            if fsync_rule_applied(output, S3_BUCKET) == fsync:
                return
        last = output.strip().splitlines()[-1:] or ["no output"]
        raise ServiceUnhealthy(
            self.name, f"fs.configure fsync={fsync} not applied: {last[0][:200]}", self.log
        )


def seaweedfs_ha_services(ctx: StackContext) -> list[Service]:
    """The cluster's services in start order: the masters (one group: a raft needs a
    quorum to elect), the volume servers, the filers, the S3 nodes."""
    return list(seaweedfs_nodes(ctx))


def seaweedfs_nodes(ctx: StackContext) -> list[WeedNode]:
    """Every node of the cluster, in start order (seaweedfs_ha_services)."""
    return [
        *(WeedMaster(ctx, n) for n in MASTER_NODES),
        *(WeedVolume(ctx, n) for n in VOLUME_NODES),
        *(WeedFiler(ctx, n) for n in FILER_NODES),
        *(WeedS3Node(ctx, n) for n in S3_NODES),
    ]
