"""The gateway's upstreams list every central node the settings name, and the stack gives
each node its own name, ports, home and key ring (#19, 4: two of everything)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from imgcloud.storage.keyring import KeyRing, write_key_ring

from deploy.stack.context import StackContext
from deploy.stack.errors import StackError
from deploy.stack.launcher import service, services, start_groups, status
from deploy.stack.pki import ensure_pki
from deploy.stack.ports import PORT_NAMES, allocate, port_names
from deploy.stack.services.central import CentralOrthanc, central_nodes
from deploy.stack.services.gateway import NGINX, Gateway, upstream_servers
from deploy.stack.settings import REPO_ROOT, StackSettings, _read_versions, node_count

SECRETS = {
    "central_orthanc": "pw",
    "gateway_forward_secret": "fwd",
    "db_central": "db",
    "s3_access_key": "ak",
    "s3_secret_key": "sk",
}


def context(
    tmp_path: Path, nodes: int, pki: dict[str, Path] | None = None, indexers: int = 1
) -> StackContext:
    settings = StackSettings(
        state_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        versions=_read_versions(REPO_ROOT / "deploy" / "versions.env"),
        central_nodes=nodes,
        indexer_nodes=indexers,
    )
    ports = allocate(tmp_path / "ports.json", settings.port_names)
    return StackContext(
        settings, ports, SECRETS, pki or {"server_cert": Path("/c")} | {"server_key": Path("/k")}
    )


def upstream(conf: str, name: str) -> str:
    match = re.search(rf"upstream {name} \{{([^}}]*)\}}", conf)
    assert match, f"no upstream {name}"
    return match.group(1)


@pytest.mark.parametrize("nodes", [1, 2])
def test_upstream_central_lists_every_node_and_keeps_its_keepalive(
    tmp_path: Path, nodes: int
) -> None:
    ctx = context(tmp_path, nodes)
    conf = Gateway(ctx).render()
    ports = [ctx.ports["central_http"]] + [
        ctx.ports[f"central_{k}_http"] for k in range(2, nodes + 1)
    ]
    central = upstream(conf, "central")
    assert re.findall(r"server ([^;]+);", central) == [f"127.0.0.1:{p}" for p in ports]
    assert "keepalive 32; keepalive_timeout 500ms;" in central
    indexer = upstream(conf, "indexer")
    assert re.findall(r"server ([^;]+);", indexer) == [f"127.0.0.1:{ctx.ports['indexer']}"]
    assert "keepalive 16;" in indexer


def test_upstream_indexer_lists_every_indexer_node(tmp_path: Path) -> None:
    ctx = context(tmp_path, 1, indexers=2)
    indexer = upstream(Gateway(ctx).render(), "indexer")
    ports = [ctx.ports["indexer"], ctx.ports["indexer_2"]]
    assert re.findall(r"server ([^;]+);", indexer) == [f"127.0.0.1:{p}" for p in ports]
    names = [[s.name for s in group] for group in start_groups(services(ctx))]
    assert ["indexer", "indexer-2"] in names
    second = next(s for s in services(ctx) if s.name == "indexer-2")
    assert str(ctx.ports["indexer_2"]) in second.argv()


def test_the_access_log_names_the_node_that_answered(tmp_path: Path) -> None:
    conf = Gateway(context(tmp_path, 2)).render()
    formats = re.findall(r"log_format (\w+) ((?:'[^']*'\s*)+);", conf)
    assert {name for name, _ in formats} == {"gateway", "share_link"}
    assert all("$upstream_addr" in text for _, text in formats)


def test_an_upstream_without_a_server_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        upstream_servers([])
    assert upstream_servers(["a:1", "b:2"]) == "server a:1; server b:2;"


@pytest.mark.skipif(not NGINX.exists() or os.geteuid() != 0, reason="needs nginx, as root")
@pytest.mark.parametrize("nodes", [1, 2])
def test_nginx_accepts_the_rendered_configuration(tmp_path: Path, nodes: int) -> None:
    ctx = context(tmp_path, nodes, ensure_pki(tmp_path / "pki"), indexers=nodes)
    gateway = Gateway(ctx)
    for sub in ("tmp", "logs"):
        (gateway.home / sub).mkdir(parents=True, exist_ok=True)
    gateway.write_conf(gateway.render())
    result = subprocess.run(
        [*gateway.argv(), "-t", "-q"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variable", ["STACK_CENTRAL_NODES", "STACK_INDEXER_NODES"])
@pytest.mark.parametrize("text", ["0", "9", "two", "", "1.5"])
def test_a_node_count_outside_1_to_8_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=variable):
        StackSettings.from_env(str(tmp_path))
    assert node_count("X", " 8 ") == 8


def test_the_default_is_one_node_named_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STACK_CENTRAL_NODES", raising=False)
    monkeypatch.delenv("STACK_INDEXER_NODES", raising=False)
    settings = StackSettings.from_env(str(tmp_path))
    assert settings.central_nodes == settings.indexer_nodes == 1
    assert settings.port_names == PORT_NAMES
    ctx = context(tmp_path, 1)
    assert [s.name for s in services(ctx) if isinstance(s, CentralOrthanc)] == ["central"]
    assert CentralOrthanc(ctx).ports == ("central_http",)
    assert CentralOrthanc(ctx).runtime_config()["Name"] == "imaging-cloud-central"
    assert "DatabaseServerIdentifier" not in CentralOrthanc(ctx).runtime_config()


def test_node_two_has_its_own_name_ports_home_and_key_folder(tmp_path: Path) -> None:
    ctx = context(tmp_path, 2)
    first, second = central_nodes(ctx)
    assert (second.name, second.http_port, second.dicom_port) == (
        "central-2",
        "central_2_http",
        "central_2_dicom",
    )
    assert second.home == tmp_path / "central-2" != first.home
    assert second.key_dir == tmp_path / "keys" / "central-2"
    config = second.runtime_config()
    assert config["Name"] == config["DatabaseServerIdentifier"] == "imaging-cloud-central-2"
    assert config["HttpPort"] == ctx.ports["central_2_http"] != ctx.ports["central_http"]
    assert config["PostgreSQL"] == first.runtime_config()["PostgreSQL"]
    bucket = config["ImagingCloud"]["Storage"]["S3"]["Bucket"]
    assert bucket == first.runtime_config()["ImagingCloud"]["Storage"]["S3"]["Bucket"]
    assert config["ImagingCloud"]["Storage"]["KeyRingFile"] == str(second.key_ring_file)


def test_the_nodes_of_one_component_start_as_one_group(tmp_path: Path) -> None:
    groups = start_groups(services(context(tmp_path, 3)))
    names = [[s.name for s in group] for group in groups]
    assert ["central", "central-2", "central-3"] in names
    assert all(len(group) == 1 for group in names if "central" not in group)


def test_a_stack_recorded_with_one_node_gains_the_second_nodes_ports(tmp_path: Path) -> None:
    path = tmp_path / "ports.json"
    one = allocate(path)
    two = allocate(path, port_names(2))
    assert {k: two[k] for k in one} == one
    assert {"central_2_http", "central_2_dicom"} <= set(two)
    assert len(set(two.values())) == len(two)


def test_node_two_starts_with_a_copy_of_node_ones_ring_owned_as_it_is(tmp_path: Path) -> None:
    ctx = context(tmp_path, 2)
    first, second = central_nodes(ctx)
    ring = first.ensure_key_ring()
    if os.geteuid() == 0:
        os.chown(ring, 10042, 10042)  # as the launcher's handover to the service uid leaves it
    copy = second.ensure_key_ring()
    same = hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(ring.read_bytes()).digest()
    assert copy != ring and same, "node 2's ring is not a copy of node 1's"
    assert (copy.stat().st_uid, copy.stat().st_mode & 0o777) == (ring.stat().st_uid, 0o600)
    assert KeyRing.from_file(copy, "KeyRingFile").current_id == "k1"
    # a node that has a ring keeps it (its own file, not rewritten) if it agrees with node 1's
    inode = copy.stat().st_ino
    assert second.ensure_key_ring() == copy and copy.stat().st_ino == inode
    # and is refused, named, if it does not (a regenerated ring, a node left out of a rotation)
    write_key_ring(KeyRing.generate("k9"), copy)
    with pytest.raises(StackError, match=r"central-2: .*other key ids"):
        second.ensure_key_ring()
    write_key_ring(KeyRing.generate("k1"), copy)  # the same id, other bytes
    with pytest.raises(StackError, match=r"central-2: .*other bytes under key id 'k1'"):
        second.ensure_key_ring()


def test_node_two_never_writes_its_ring_through_a_symlink(tmp_path: Path) -> None:
    first, second = central_nodes(context(tmp_path, 2))
    first.ensure_key_ring()
    second.key_dir.mkdir(mode=0o700, parents=True)
    target = tmp_path / "elsewhere.json"
    second.key_ring_file.symlink_to(target)  # dangling: exists() is False
    with pytest.raises(StackError, match="not a regular file"):
        second.ensure_key_ring()
    assert not target.exists()


def test_compose_gateway_fills_every_placeholder_and_lists_every_central() -> None:
    """nginx's image leaves a placeholder it has no variable for in the configuration, and
    its upstream must name each central service of compose."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    env = compose["gateway"]["environment"]
    template = (REPO_ROOT / "deploy/gateway/nginx.conf.template").read_text()
    placeholders = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", template))
    assert placeholders - set(env) == set()
    centrals = {
        name
        for name, svc in compose.items()
        if "PostgreSQLIndex" in str(svc.get("environment", {}).get("ORTHANC__PLUGINS", ""))
    }
    assert centrals == {"central", "central-2"}
    servers = re.findall(r"server ([\w.-]+):8042;", env["CENTRAL_SERVERS"])
    assert sorted(servers) == sorted(centrals)
    assert set(compose["gateway"]["depends_on"]) >= centrals


def test_status_and_service_know_every_node(tmp_path: Path) -> None:
    ctx = context(tmp_path, 2, indexers=2)
    (tmp_path / "run").mkdir()
    assert service(ctx, "central-2").ports == ("central_2_http",)
    assert service(ctx, "indexer-2").ports == ("indexer_2",)
    rows = {row.name: row.problem for row in status(ctx)}
    assert rows["central-2"] == rows["indexer-2"] == "not running"
