"""etcd: three members on loopback, one raft cluster, the store (DCS) in which Patroni keeps
the PostgreSQL cluster's leader key and its synchronous standby. Two of three keep a
quorum: one member may be lost."""

from __future__ import annotations

from pathlib import Path

from ..context import StackContext
from ..errors import PrerequisiteMissing
from .base import Service, http_health

ETCD_BIN = Path("/usr/bin/etcd")  # Debian 12's etcd-server (3.4)
MEMBERS = (1, 2, 3)
CLUSTER_TOKEN = "imgcloud-pg-dcs"  # noqa: S105 - a cluster name, not a secret


def etcd_name(node: int) -> str:
    return f"etcd-{node}"


def client_url(ctx: StackContext, node: int) -> str:
    return f"http://127.0.0.1:{ctx.ports[f'etcd_{node}_client']}"


def peer_url(ctx: StackContext, node: int) -> str:
    return f"http://127.0.0.1:{ctx.ports[f'etcd_{node}_peer']}"


def initial_cluster(ctx: StackContext) -> str:
    return ",".join(f"{etcd_name(n)}={peer_url(ctx, n)}" for n in MEMBERS)


def etcd_argv(ctx: StackContext, node: int, data_dir: Path) -> list[str]:
    """One member's command line. The --initial-* flags matter on the first start only: a
    member with a data directory rejoins the cluster it recorded there."""
    client, peer = client_url(ctx, node), peer_url(ctx, node)
    return [
        str(ETCD_BIN),
        f"--name={etcd_name(node)}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={initial_cluster(ctx)}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={CLUSTER_TOKEN}",
        # Patroni renews its leader key every loop: keep one hour of history, not all of it.
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
        "--snapshot-count=10000",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


class Etcd(Service):
    """One etcd member; the three are consecutive services of this class (one start group,
    since none is healthy before a quorum is up)."""

    name = "etcd-1"
    ports = ("etcd_1_client", "etcd_1_peer")
    stop_timeout_s = 20.0

    def __init__(self, ctx: StackContext, node: int = 1) -> None:
        super().__init__(ctx)
        if node not in MEMBERS:
            raise ValueError(f"etcd member {node}: the cluster has members {MEMBERS}")
        self.node = node
        self.name = etcd_name(node)
        self.ports = (f"etcd_{node}_client", f"etcd_{node}_peer")

    @property
    def data_dir(self) -> Path:
        return self.ctx.state / "etcd" / str(self.node)

    @property
    def client_url(self) -> str:
        return client_url(self.ctx, self.node)

    def prepare(self) -> None:
        if not ETCD_BIN.exists():
            raise PrerequisiteMissing(self.name, f"{ETCD_BIN} not found: run make install")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return etcd_argv(self.ctx, self.node, self.data_dir)

    def health(self) -> str | None:
        """Healthy when this member sees a leader (a quorum is up)."""
        return http_health(
            f"{self.client_url}/health",
            check=lambda r: None if r.json().get("health") == "true" else f"etcd: {r.text}",
        )


def etcd_members(ctx: StackContext) -> list[Etcd]:
    return [Etcd(ctx, node) for node in MEMBERS]
