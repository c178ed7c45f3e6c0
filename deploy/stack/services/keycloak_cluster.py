"""Keycloak as two nodes of one Infinispan cluster (the HA topology, docs/ha.md).

Both nodes run the install's one build (in Keycloak 26 the cache options are runtime
options, so `--cache=ispn` needs no other build than the small stack's `--cache=local`),
share the stack's `keycloak` database and find each other through it (JGroups JDBC_PING2,
Keycloak's default `jdbc-ping` stack: no multicast). Every listening socket is on
127.0.0.1: the HTTP and management ports, the JGroups transport (TCP, with Keycloak's
default mutual TLS on self-generated, rotated certificates), JGroups' failure detection
(FD_SOCK2, which otherwise listens at the transport port plus 50000, wrapped below 65536)
and Narayana's process-id socket (otherwise a kernel-chosen port).

Node 1 keeps the small stack's service name and ports ("keycloak", "keycloak_mgmt"), so
every client that reads KEYCLOAK_URL is unchanged; the realm is provisioned once, through
node 1, when it first turns healthy (both nodes read it from the shared database).
"""

from __future__ import annotations

import json
import random

from ..context import StackContext
from ..errors import StackError
from ..ports import listening_range, pick_free, port_is_free
from .base import Service
from .keycloak import Keycloak

NODES = (1, 2)
# Recorded once per state directory (keycloak-extra-ports.json), none of them a port of
# ports.json: JGroups' failure-detection offset and each node's Narayana process-id port.
EXTRA_PORTS_FILE = "keycloak-extra-ports.json"
# Cluster membership changes (joins, leaves, a node suspected) are logged; the rest at WARN.
CLUSTER_LOG_LEVEL = "WARN,org.infinispan.CLUSTER:info,org.jgroups:warn"


def node_name(node: int) -> str:
    """The service name of node `node`: node 1 keeps the small stack's."""
    return "keycloak" if node == 1 else f"keycloak_{node}"


def node_ports(node: int) -> tuple[str, str, str]:
    """(HTTP, management, JGroups transport) port names of node `node`."""
    prefix = node_name(node)
    return (prefix, f"{prefix}_mgmt", f"keycloak_cluster_{node}")


def _recorded(ctx: StackContext) -> dict[str, int]:
    path = ctx.state / EXTRA_PORTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _record(ctx: StackContext, values: dict[str, int]) -> None:
    (ctx.state / EXTRA_PORTS_FILE).write_text(json.dumps(values, indent=1))


def _usable(port: int, avoid: set[int]) -> bool:
    return port in listening_range() and port not in avoid and port_is_free(port)


def fd_offset(ctx: StackContext) -> int:
    """JGroups' FD_SOCK2 offset, one for the whole cluster: every member computes where a
    peer's failure detection listens from the peer's transport port plus its own offset.
    Picked once so that both nodes' FD ports (transport port + offset) are free ports of the
    listening range, none of them a port of the stack."""
    recorded = _recorded(ctx)
    if "fd_offset" in recorded:
        return recorded["fd_offset"]
    transports = [ctx.ports[node_ports(n)[2]] for n in NODES]
    avoid = set(ctx.ports.values()) | set(recorded.values())
    candidates = list(listening_range())
    random.SystemRandom().shuffle(candidates)
    for target in candidates[:2000]:
        offset = target - transports[0]
        ports = [t + offset for t in transports]
        if offset and all(_usable(p, avoid) for p in ports):
            _record(ctx, recorded | {"fd_offset": offset})
            return offset
    raise StackError("keycloak", "no free ports for JGroups failure detection")


def txid_port(ctx: StackContext, node: int) -> int:
    """Node `node`'s Narayana process-id port: Narayana holds a loopback socket open to
    make its transaction ids unique per process (else on a kernel-chosen port)."""
    name = f"keycloak_txid_{node}"
    recorded = _recorded(ctx)
    if name not in recorded:
        wanted = [f"keycloak_txid_{n}" for n in NODES if f"keycloak_txid_{n}" not in recorded]
        avoid = [*ctx.ports.values(), *recorded.values()]
        avoid += [ctx.ports[node_ports(n)[2]] + fd_offset(ctx) for n in NODES]
        recorded = _recorded(ctx)  # fd_offset may have just recorded itself
        recorded.update(zip(wanted, pick_free(len(wanted), avoid), strict=True))
        _record(ctx, recorded)
    return recorded[name]


class KeycloakNode(Keycloak):
    """One node of the Keycloak cluster."""

    log_level = CLUSTER_LOG_LEVEL

    def __init__(self, ctx: StackContext, node: int) -> None:
        super().__init__(ctx)
        self.node = node
        self.name = node_name(node)
        self.ports = node_ports(node)

    @property
    def cluster_port(self) -> int:
        return self.ctx.ports[self.ports[2]]

    @property
    def fd_port(self) -> int:
        return (self.cluster_port + fd_offset(self.ctx)) % 65536

    @property
    def txid_port(self) -> int:
        return txid_port(self.ctx, self.node)

    def listening_ports(self) -> set[int]:
        """Every port the node's JVM listens on (all of them on 127.0.0.1)."""
        own = {self.ctx.ports[name] for name in self.ports}
        return own | {self.fd_port, self.txid_port}

    def cache_options(self) -> list[str]:
        return [
            "--cache=ispn",
            "--cache-stack=jdbc-ping",
            # Mutual TLS between the nodes (Keycloak's default since 26.2, stated so that a
            # changed default cannot turn it off; ephemeral keys shared via the database)
            "--cache-embedded-mtls-enabled=true",
            "--cache-embedded-network-bind-address=127.0.0.1",
            f"--cache-embedded-network-bind-port={self.cluster_port}",
            # The name in the cluster's views and logs (else the host name and a number).
            f"--spi-cache-embedded--default--node-name={self.name}",
        ]

    def env(self) -> dict[str, str]:
        java = [
            # The transport binds its own port or fails, never the next free one (which
            # could be another service's).
            "-Djgroups.port_range=0",
            # FD_SOCK2 listens at (transport port + offset) mod 65536, as its peers expect.
            f"-Djgroups.fd.port-offset={fd_offset(self.ctx)}",
            f"-DCoreEnvironmentBean.socketProcessIdPort={self.txid_port}",
        ]
        return super().env() | {"JAVA_OPTS_APPEND": " ".join(java)}

    def after_healthy(self) -> None:
        if self.node == 1:  # once, through node 1: the realm lives in the shared database
            super().after_healthy()


def keycloak_ha_services(ctx: StackContext) -> list[Service]:
    """Both Keycloak nodes, in start order (they start together, as one cluster)."""
    return [KeycloakNode(ctx, node) for node in NODES]


def keycloak_node_urls(ctx: StackContext) -> list[str]:
    """Each node's internal /auth URL (for stack.env and the gateway's upstream)."""
    return [f"{ctx.http(node_ports(node)[0])}/auth" for node in NODES]
