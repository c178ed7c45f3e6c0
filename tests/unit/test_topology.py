"""The topology switch (IMGCLOUD_TOPOLOGY): the small stack keeps one process per
component; the HA one starts the clusters in groups, lists both Keycloak nodes in the
gateway, and points the indexer's own calls at the local proxy's fronts (#14)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from deploy.stack.context import StackContext
from deploy.stack.launcher import services, start_groups
from deploy.stack.ports import allocate
from deploy.stack.services.gateway import Gateway
from deploy.stack.services.ha_proxy import HaProxy
from deploy.stack.services.indexer import Indexer
from deploy.stack.settings import REPO_ROOT, StackSettings, _read_versions, topology

SECRETS = {
    "central_orthanc": "pw",
    "gateway_forward_secret": "fwd",
    "db_central": "db",
    "db_indexer": "dbi",
    "indexer_platform_key": "pk",
    "s3_access_key": "ak",
    "s3_secret_key": "sk",
}


def context(tmp_path: Path, shape: str) -> StackContext:
    settings = StackSettings(
        state_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        versions=_read_versions(REPO_ROOT / "deploy" / "versions.env"),
        central_nodes=2 if shape == "ha" else 1,
        indexer_nodes=2 if shape == "ha" else 1,
        topology=shape,
    )
    ports = allocate(tmp_path / "ports.json", settings.port_names)
    pki = {"server_cert": Path("/c"), "server_key": Path("/k")}
    return StackContext(settings, ports, SECRETS, pki)


def test_the_small_topology_is_one_process_per_component(tmp_path: Path) -> None:
    names = [svc.name for svc in services(context(tmp_path, "small"))]
    assert names[:3] == ["postgres", "seaweedfs", "keycloak"]
    assert not any(n.startswith(("etcd", "patroni", "ha-proxy")) for n in names)


def test_the_ha_topology_starts_each_cluster_as_one_group(tmp_path: Path) -> None:
    groups = [[svc.name for svc in g] for g in start_groups(services(context(tmp_path, "ha")))]
    assert groups[:3] == [["etcd-1", "etcd-2", "etcd-3"], ["patroni-1", "patroni-2"], ["ha-proxy"]]
    assert ["keycloak", "keycloak_2"] in groups
    assert ["central", "central-2"] in groups and ["indexer", "indexer-2"] in groups
    assert sum(len(g) for g in groups if g[0].startswith("seaweedfs-volume")) == 3
    assert sum(len(g) for g in groups if g[0].startswith("seaweedfs-s3")) == 2
    assert groups[-4:] == [["gateway"], ["postgres-exporter"], ["nginx-exporter"], ["prometheus"]]


def test_the_ha_proxy_fronts_every_central_and_keycloak_node(tmp_path: Path) -> None:
    ctx = context(tmp_path, "ha")
    proxy = next(svc for svc in services(ctx) if isinstance(svc, HaProxy))
    conf = proxy.config()
    for front, backends in (
        ("central_lb", ["central_http", "central_2_http"]),
        ("keycloak_lb", ["keycloak", "keycloak_2"]),
    ):
        section = conf.split(f"listen {front}\n", 1)[1].split("\n\n", 1)[0]
        assert f"bind 127.0.0.1:{ctx.ports[front]}" in section
        found = re.findall(r"server \S+ 127\.0\.0\.1:(\d+) check", section)
        assert sorted(map(int, found)) == sorted(ctx.ports[b] for b in backends)


@pytest.mark.parametrize("shape", ["small", "ha"])
def test_the_indexer_calls_node_one_or_the_proxy(tmp_path: Path, shape: str) -> None:
    ctx = context(tmp_path, shape)
    env = Indexer(ctx).env()
    central = "central_lb" if shape == "ha" else "central_http"
    keycloak = "keycloak_lb" if shape == "ha" else "keycloak"
    assert env["INDEXER_CENTRAL_URL"] == f"http://127.0.0.1:{ctx.ports[central]}"
    assert env["INDEXER_OIDC_JWKS_URL"].startswith(f"http://127.0.0.1:{ctx.ports[keycloak]}/auth/")


@pytest.mark.parametrize("shape", ["small", "ha"])
def test_the_gateway_lists_each_keycloak_node(tmp_path: Path, shape: str) -> None:
    ctx = context(tmp_path, shape)
    conf = Gateway(ctx).render()
    upstream = re.search(r"upstream keycloak \{([^}]*)\}", conf)
    assert upstream
    nodes = ["keycloak", "keycloak_2"] if shape == "ha" else ["keycloak"]
    assert re.findall(r"server 127\.0\.0\.1:(\d+);", upstream.group(1)) == [
        str(ctx.ports[n]) for n in nodes
    ]


def test_a_topology_name_is_checked() -> None:
    assert topology(" HA ") == "ha" and topology("") == "small"
    with pytest.raises(ValueError, match="IMGCLOUD_TOPOLOGY: 'big' is not one of small, ha"):
        topology("big")
    with pytest.raises(ValueError, match="IMGCLOUD_TOPOLOGY"):
        dataclasses.replace(
            StackSettings(state_dir=Path("/x"), cache_dir=Path("/y")), topology="big"
        )
