"""Keycloak as two nodes of one Infinispan cluster (the HA topology, docs/ha.md).

Both nodes run the install's one build (in Keycloak 26 the cache options are runtime
options, so `--cache=ispn` needs no other build than the small stack's `--cache=local`),
share the stack's `keycloak` database and find each other through it (JGroups JDBC_PING2,
Keycloak's default `jdbc-ping` stack: no multicast). Every listening socket is on
127.0.0.1: the HTTP and management ports, the JGroups transport (TCP, mutual TLS with
certificates Keycloak keeps in the database) and JGroups' failure detection (FD_SOCK2),
which otherwise listens at the transport port plus 50000 (wrapped below 65536).

Node 1 keeps the small stack's service name and ports ("keycloak", "keycloak_mgmt"), so
every client that reads KEYCLOAK_URL is unchanged; the realm is provisioned once, through
node 1, when it first turns healthy (both nodes read it from the shared database).
"""

from __future__ import annotations

import json

from ..context import StackContext
from ..ports import pick_free
from .base import Service
from .keycloak import Keycloak

NODES = (1, 2)
# Failure-detection ports of the nodes, picked once per state directory (free, none of the
# stack's ports) when ports.json does not name them (keycloak_fd_1, keycloak_fd_2).
FD_PORTS_FILE = "keycloak-fd-ports.json"
# Cluster membership changes (joins, leaves, a node suspected) are logged; the rest at WARN.
CLUSTER_LOG_LEVEL = "WARN,org.infinispan.CLUSTER:info,org.jgroups:warn"


def node_name(node: int) -> str:
    """The service name of node `node`: node 1 keeps the small stack's."""
    return "keycloak" if node == 1 else f"keycloak_{node}"


def node_ports(node: int) -> tuple[str, str, str]:
    """(HTTP, management, JGroups transport) port names of node `node`."""
    prefix = node_name(node)
    return (prefix, f"{prefix}_mgmt", f"keycloak_cluster_{node}")


def failure_detection_port(ctx: StackContext, node: int) -> int:
    """Where node `node`'s JGroups FD_SOCK2 listens: ports.json's keycloak_fd_<node> if the
    stack has one, else a free port recorded in the state directory on first use."""
    name = f"keycloak_fd_{node}"
    if name in ctx.ports:
        return ctx.ports[name]
    path = ctx.state / FD_PORTS_FILE
    recorded: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    if name not in recorded:
        wanted = [f"keycloak_fd_{n}" for n in NODES if f"keycloak_fd_{n}" not in recorded]
        picked = pick_free(len(wanted), [*ctx.ports.values(), *recorded.values()])
        recorded.update(zip(wanted, picked, strict=True))
        path.write_text(json.dumps(recorded, indent=1))
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
        return failure_detection_port(self.ctx, self.node)

    def cache_options(self) -> list[str]:
        return [
            "--cache=ispn",
            "--cache-stack=jdbc-ping",
            "--cache-embedded-network-bind-address=127.0.0.1",
            f"--cache-embedded-network-bind-port={self.cluster_port}",
            # The name in the cluster's views and logs (else the host name and a number).
            f"--spi-cache-embedded--default--node-name={self.name}",
        ]

    def env(self) -> dict[str, str]:
        # FD_SOCK2 listens at (transport port + offset) mod 65536: the offset puts it on
        # fd_port. port_range=0: the transport binds its own port or fails, never the next
        # free one (which could be another service's).
        offset = self.fd_port - self.cluster_port
        return super().env() | {
            "JAVA_OPTS_APPEND": f"-Djgroups.port_range=0 -Djgroups.fd.port-offset={offset}"
        }

    def after_healthy(self) -> None:
        if self.node == 1:  # once, through node 1: the realm lives in the shared database
            super().after_healthy()


def keycloak_ha_services(ctx: StackContext) -> list[Service]:
    """Both Keycloak nodes, in start order (they start together, as one cluster)."""
    return [KeycloakNode(ctx, node) for node in NODES]


def keycloak_node_urls(ctx: StackContext) -> list[str]:
    """Each node's internal /auth URL (for stack.env and the gateway's upstream)."""
    return [f"{ctx.http(node_ports(node)[0])}/auth" for node in NODES]
