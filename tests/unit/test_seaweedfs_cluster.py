"""The HA topology's SeaweedFS cluster: each node's command line (loopback only, the raft's
three peers, replication, every master known to every node) and the start order."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from deploy.stack.context import StackContext
from deploy.stack.launcher import start_groups
from deploy.stack.ports import port_names
from deploy.stack.services.seaweedfs_cluster import (
    REPLICATION,
    WeedFiler,
    WeedMaster,
    WeedNode,
    WeedS3Node,
    WeedVolume,
    seaweedfs_ha_services,
)
from deploy.stack.settings import StackSettings

IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


def ha_context(tmp_path: Path) -> StackContext:
    settings = dataclasses.replace(StackSettings.from_env(str(tmp_path)), topology="ha")
    ports = {name: 21000 + i for i, name in enumerate(port_names(ha=True))}
    return StackContext(settings=settings, ports=ports, secrets={}, pki={})


def weed_args(svc: WeedNode) -> list[str]:
    """The weed command line after the private-/tmp wrapper."""
    argv = svc.argv()
    return argv[argv.index(str(svc.ctx.settings.venv_bin / "weed")) :]


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"-{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


def every_master(ctx: StackContext) -> list[str]:
    p = ctx.ports
    return [
        f"127.0.0.1:{p[name]}.{p[name + '_grpc']}"
        for name in ("weed_master", "weed_master_2", "weed_master_3")
    ]


def test_every_node_binds_and_names_loopback_only(tmp_path: Path) -> None:
    ctx = ha_context(tmp_path)
    for svc in seaweedfs_ha_services(ctx):
        assert isinstance(svc, WeedNode)
        args = weed_args(svc)
        assert "-ip=127.0.0.1" in args and "-ip.bind=127.0.0.1" in args, svc.name
        addresses = {ip for arg in args for ip in IP.findall(arg)}
        assert addresses == {"127.0.0.1"}, (svc.name, addresses)


def test_the_masters_are_one_raft_of_three_with_replication(tmp_path: Path) -> None:
    ctx = ha_context(tmp_path)
    masters = [s for s in seaweedfs_ha_services(ctx) if isinstance(s, WeedMaster)]
    assert len(masters) == 3
    homes = set()
    for master in masters:
        args = weed_args(master)
        assert flag(args, "peers").split(",") == every_master(ctx)
        assert flag(args, "defaultReplication") == REPLICATION == "001"
        assert "-disableHttp" in args  # /dir/assign would hand out write JWTs
        assert "-resumeState=false" in args  # rejoins as a follower
        assert f"127.0.0.1:{flag(args, 'port')}.{flag(args, 'port.grpc')}" in every_master(ctx)
        homes.add(flag(args, "mdir"))
    assert len(homes) == 3


def test_volume_servers_and_filers_know_every_master(tmp_path: Path) -> None:
    ctx = ha_context(tmp_path)
    svcs = seaweedfs_ha_services(ctx)
    volumes = [s for s in svcs if isinstance(s, WeedVolume)]
    filers = [s for s in svcs if isinstance(s, WeedFiler)]
    assert len(volumes) == 3 and len(filers) == 2
    dirs = set()
    for svc in (*volumes, *filers):
        assert flag(weed_args(svc), "master").split(",") == every_master(ctx)
    for volume in volumes:
        data = Path(flag(weed_args(volume), "dir"))
        assert data.is_relative_to(ctx.state)
        dirs.add(data)
    assert len(dirs) == 3
    assert all("-disableHttp" in weed_args(f) for f in filers)


def test_s3_nodes_use_both_filers_and_not_the_proxy_port(tmp_path: Path) -> None:
    ctx = ha_context(tmp_path)
    p = ctx.ports
    nodes = [s for s in seaweedfs_ha_services(ctx) if isinstance(s, WeedS3Node)]
    assert [n.port for n in nodes] == [p["weed_s3_node_1"], p["weed_s3_node_2"]]
    filers = [f"127.0.0.1:{p[n]}.{p[n + '_grpc']}" for n in ("weed_filer", "weed_filer_2")]
    configs = set()
    for node in nodes:
        args = weed_args(node)
        assert flag(args, "filer").split(",") == filers
        configs.add(flag(args, "config"))
    assert len(configs) == 1  # the same identities on both
    for svc in seaweedfs_ha_services(ctx):
        assert "weed_s3" not in svc.ports  # the local HAProxy's front
        assert not any(str(p["weed_s3"]) in arg for arg in weed_args(svc))  # type: ignore[arg-type]


def test_ports_are_distinct_and_match_the_command_line(tmp_path: Path) -> None:
    ctx = ha_context(tmp_path)
    seen: list[int] = []
    for svc in seaweedfs_ha_services(ctx):
        assert isinstance(svc, WeedNode)
        args = weed_args(svc)
        assert [int(flag(args, "port")), int(flag(args, "port.grpc"))] == [
            ctx.ports[name] for name in svc.ports
        ]
        seen += [ctx.ports[name] for name in svc.ports]
    assert len(seen) == len(set(seen)) == 20


def test_start_order_masters_volumes_filers_s3(tmp_path: Path) -> None:
    groups = start_groups(seaweedfs_ha_services(ha_context(tmp_path)))
    assert [[s.name for s in g] for g in groups] == [
        ["seaweedfs-master-1", "seaweedfs-master-2", "seaweedfs-master-3"],
        ["seaweedfs-volume-1", "seaweedfs-volume-2", "seaweedfs-volume-3"],
        ["seaweedfs-filer-1", "seaweedfs-filer-2"],
        ["seaweedfs-s3-1", "seaweedfs-s3-2"],
    ]
