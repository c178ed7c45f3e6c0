"""Which processes stand for a component in each topology (IMGCLOUD_TOPOLOGY, docs/ha.md).

The small topology runs one process per component. The HA topology replaces PostgreSQL,
SeaweedFS and Keycloak with their clusters, and its local proxy (HAProxy, started with
PostgreSQL's cluster) also fronts the indexer's own calls: `central_lb` (any live central
node) and `keycloak_lb` (any live Keycloak node), so no call of the indexer names one node.
Central and the indexer run two nodes or more (settings.py).
"""

from __future__ import annotations

from collections.abc import Callable

from .context import StackContext
from .services.base import Service
from .services.central import central_nodes
from .services.ha_proxy import Backend, Front
from .services.keycloak import Keycloak
from .services.keycloak_cluster import keycloak_ha_services, node_ports
from .services.patroni import postgres_ha_services
from .services.postgres import Postgres
from .services.seaweedfs import SeaweedFS
from .services.seaweedfs_cluster import seaweedfs_ha_services

LB_IDLE_TIMEOUT = "5m"


def central_front(ctx: StackContext) -> Front:
    """Every central node that answers HTTP (its REST API asks for credentials: any answer
    below 500 is a node that serves)."""
    return Front(
        name="central_lb",
        port=ctx.ports["central_lb"],
        backends=tuple(
            Backend(node.name.replace("-", "_"), ctx.ports[node.http_port])
            for node in central_nodes(ctx)
        ),
        check=("option httpchk GET /system", "http-check expect rstatus ^[1-4][0-9][0-9]$"),
        balance="roundrobin",
        idle_timeout=LB_IDLE_TIMEOUT,
        rise=2,
        server_options="on-marked-down shutdown-sessions",
    )


def keycloak_front(ctx: StackContext) -> Front:
    """Every Keycloak node whose management port says it is ready."""
    return Front(
        name="keycloak_lb",
        port=ctx.ports["keycloak_lb"],
        backends=tuple(
            Backend(f"keycloak_{n}", ctx.ports[node_ports(n)[0]], ctx.ports[node_ports(n)[1]])
            for n in (1, 2)
        ),
        check=("option httpchk GET /auth/health/ready", "http-check expect status 200"),
        balance="roundrobin",
        idle_timeout=LB_IDLE_TIMEOUT,
        rise=2,
        server_options="on-marked-down shutdown-sessions",
    )


def _postgres(ctx: StackContext) -> list[Service]:
    return postgres_ha_services(ctx, extra_fronts=(central_front(ctx), keycloak_front(ctx)))


def ha_replacements() -> dict[type[Service], Callable[[StackContext], list[Service]]]:
    """The small topology's service class -> the HA topology's services for it."""
    return {Postgres: _postgres, SeaweedFS: seaweedfs_ha_services, Keycloak: keycloak_ha_services}
