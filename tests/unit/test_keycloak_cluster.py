"""The HA topology's two Keycloak nodes: one cluster on loopback, each on ports of its own,
one database; the small stack's Keycloak stays a single node with no cluster (#14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.stack.context import StackContext
from deploy.stack.errors import StackError
from deploy.stack.launcher import start_groups
from deploy.stack.ports import allocate, listening_range
from deploy.stack.secrets_store import ensure_secrets
from deploy.stack.services.keycloak import Keycloak
from deploy.stack.services.keycloak_cluster import (
    EXTRA_PORTS_FILE,
    KeycloakNode,
    keycloak_ha_services,
    keycloak_node_urls,
)
from deploy.stack.settings import REPO_ROOT, StackSettings, _read_versions


def context(tmp_path: Path, topology: str = "ha") -> StackContext:
    settings = StackSettings(
        state_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        versions=_read_versions(REPO_ROOT / "deploy" / "versions.env"),
        topology=topology,
    )
    ports = allocate(tmp_path / "ports.json", settings.port_names)
    return StackContext(settings, ports, ensure_secrets(tmp_path / "secrets.json"), {})


def options(argv: list[str]) -> dict[str, str]:
    """--name=value options of an argv, by name (each given once)."""
    pairs = [a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a]
    names = [p[0] for p in pairs]
    assert len(names) == len(set(names)), f"an option given twice: {names}"
    return dict(pairs)


def nodes(ctx: StackContext) -> list[KeycloakNode]:
    svcs = keycloak_ha_services(ctx)
    assert all(isinstance(s, KeycloakNode) for s in svcs)
    return [s for s in svcs if isinstance(s, KeycloakNode)]


def test_two_nodes_start_together_node_1_keeps_the_small_stacks_name(tmp_path: Path) -> None:
    svcs = nodes(context(tmp_path))
    assert [s.name for s in svcs] == ["keycloak", "keycloak_2"]
    assert svcs[0].ports == ("keycloak", "keycloak_mgmt", "keycloak_cluster_1")
    assert svcs[1].ports == ("keycloak_2", "keycloak_2_mgmt", "keycloak_cluster_2")
    assert start_groups(list(svcs)) == [list(svcs)]


def test_every_node_binds_loopback_with_the_cluster_cache_on(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    for node in nodes(ctx):
        opts = options(node.argv())
        http, mgmt, cluster = (ctx.ports[name] for name in node.ports)
        assert opts["http-host"] == "127.0.0.1"
        assert opts["http-port"] == str(http)
        assert opts["http-management-port"] == str(mgmt)
        assert opts["cache"] == "ispn"
        assert opts["cache-stack"] == "jdbc-ping"
        assert opts["cache-embedded-mtls-enabled"] == "true"  # node-to-node traffic: TLS
        assert opts["cache-embedded-network-bind-address"] == "127.0.0.1"
        assert opts["cache-embedded-network-bind-port"] == str(cluster)
        assert opts["spi-cache-embedded--default--node-name"] == node.name
        assert "org.infinispan.CLUSTER:info" in opts["log-level"]
        # one database for the cluster: the stack's PostgreSQL
        assert opts["db-url"] == f"jdbc:postgresql://127.0.0.1:{ctx.ports['postgres']}/keycloak"
        # the management interface (health) is not given a host of its own: it follows
        # http-host, i.e. loopback
        assert "http-management-host" not in opts
        assert node.health_url == f"http://127.0.0.1:{mgmt}/auth/health/ready"


def test_failure_detection_and_narayana_listen_on_ports_of_their_own(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    svcs = nodes(ctx)
    used: list[int] = []
    offsets = set()
    for node in svcs:
        java = node.env()["JAVA_OPTS_APPEND"].split()
        assert "-Djgroups.port_range=0" in java  # the transport never slides to another port
        (offset,) = [
            int(o.split("=")[1]) for o in java if o.startswith("-Djgroups.fd.port-offset=")
        ]
        offsets.add(offset)
        # JGroups' FD_SOCK2 listens at (transport port + offset) mod 65536
        assert (node.cluster_port + offset) % 65536 == node.fd_port
        assert node.fd_port in listening_range()
        assert f"-DCoreEnvironmentBean.socketProcessIdPort={node.txid_port}" in java
        used += [ctx.ports[name] for name in node.ports] + [node.fd_port, node.txid_port]
        assert node.listening_ports() == set(used[-5:])
    # one offset for the cluster: each member finds its peer's FD_SOCK2 with its own
    assert len(offsets) == 1
    assert len(used) == len(set(used)) == 10
    stack_ports = set(ctx.ports.values())
    assert not {p for n in svcs for p in (n.fd_port, n.txid_port)} & stack_ports
    # recorded once per state directory: a restart of a node gets the same ports
    recorded = (tmp_path / EXTRA_PORTS_FILE).read_text()
    again = nodes(ctx)
    assert [(n.fd_port, n.txid_port) for n in again] == [(n.fd_port, n.txid_port) for n in svcs]
    assert (tmp_path / EXTRA_PORTS_FILE).read_text() == recorded


def test_node_2_has_its_own_admin_url_and_the_same_secrets(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    one, two = nodes(ctx)
    assert options(two.argv())["hostname-admin"] == keycloak_node_urls(ctx)[1]
    assert options(one.argv())["hostname-admin"] == ctx.keycloak_internal_url
    assert options(one.argv())["hostname"] == options(two.argv())["hostname"]
    assert keycloak_node_urls(ctx)[0] == ctx.keycloak_internal_url
    for node in (one, two):
        secret = ctx.secrets["db_keycloak"]
        assert node.env()["KC_DB_PASSWORD"] == secret
        assert secret not in " ".join(node.argv())  # secrets by environment, not in ps


def test_realm_is_provisioned_through_node_1_only(tmp_path: Path) -> None:
    one, two = nodes(context(tmp_path))
    two.after_healthy()  # nothing to do: no Keycloak runs here, and it does not try one
    with pytest.raises(StackError):
        one.after_healthy()  # node 1 provisions (and fails: nothing listens)


def test_small_stack_keeps_one_node_and_no_cluster(tmp_path: Path) -> None:
    ctx = context(tmp_path, topology="small")
    opts = options(Keycloak(ctx).argv())
    assert opts["cache"] == "local"
    assert not [name for name in opts if name.startswith("cache-")]
    assert opts["http-port"] == str(ctx.ports["keycloak"])
    assert opts["log-level"] == "WARN"
    assert "JAVA_OPTS_APPEND" not in Keycloak(ctx).env()
