"""docker-compose.ha.yml, the redundant shape of the cloud tier (docs/ha.md), cannot run
here (no Docker engine, no `docker compose`): check what can be checked without one. The
file parses; every part of #14's shape runs on as many nodes as the design says; what it
mounts exists; what it waits for exists; every name a client dials is a service; only the
gateway publishes a port; HAProxy's and Patroni's own checkers accept their files."""

from __future__ import annotations

import graphlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.stack.services.gateway import render_template

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.ha.yml"
SMALL = ROOT / "docker-compose.yml"
HA_DIR = ROOT / "deploy/compose/ha"
# Each role of the redundant shape and how many nodes of it run (#14, docs/ha.md).
SHAPE = {
    "central": 2,
    "indexer": 2,
    "etcd": 3,
    "patroni": 2,
    "haproxy": 1,
    "weed-master": 3,
    "weed-volume": 3,
    "weed-filer": 2,
    "weed-s3": 2,
    "keycloak": 2,
    "gateway": 1,
}
# Host paths that come from the environment (the site's secrets and generated configs).
HOST_DIRS = {"KEYRING_DIR", "SEAWEEDFS_CONFIG_DIR", "TLS_DIR"}


def load(path: Path | None = None) -> dict:
    return yaml.safe_load((path or COMPOSE).read_text())


def services() -> dict[str, dict]:
    return load()["services"]


def command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def role(service: dict) -> str | None:
    """The role a service plays, read from what it runs (not from its name)."""
    image, cmd = service.get("image", ""), command(service)
    env = service.get("environment", {})
    if image.startswith("imaging-cloud/orthanc:"):
        return (
            "central"
            if env.get("ORTHANC__PYTHON_SCRIPT", "").endswith("central_plugin.py")
            else None
        )
    if image.startswith("imaging-cloud/tools:") and "indexer serve" in cmd:
        return "indexer"
    if image.startswith("quay.io/coreos/etcd:"):
        return "etcd"
    if image.startswith("imaging-cloud/patroni:"):
        return "patroni"
    if image.startswith("haproxy:"):
        return "haproxy"
    if image.startswith("chrislusf/seaweedfs:") and cmd.split()[:1] in (
        ["master"],
        ["volume"],
        ["filer"],
        ["s3"],
    ):
        return "weed-" + cmd.split()[0]
    if image.startswith("quay.io/keycloak/keycloak:") and cmd.split()[:1] == ["start"]:
        return "keycloak"
    if image.startswith("nginx:") and "ports" in service:
        return "gateway"
    return None


def nodes(of: str) -> list[str]:
    return sorted(name for name, svc in services().items() if role(svc) == of)


def flag(cmd: str, name: str) -> str:
    match = re.search(rf"(?:^|\s)-{re.escape(name)}=(\S+)", cmd)
    assert match, f"-{name} missing in {cmd!r}"
    return match.group(1)


def aliases() -> set[str]:
    found = set()
    for svc in services().values():
        for net in (svc.get("networks") or {}).values():
            found |= set((net or {}).get("aliases", []))
    return found


def test_every_role_of_the_shape_runs_on_its_count_of_nodes() -> None:
    counts = {r: len(nodes(r)) for r in SHAPE}
    assert counts == SHAPE
    # the role finder is not fooled by the one-shots that share those images
    assert role(services()["seaweedfs-fsync"]) is None
    assert role(services()["indexer-migrate"]) is None


def test_every_bind_mount_source_exists_and_every_named_volume_is_declared() -> None:
    declared = set(load()["volumes"])
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if not volume.startswith("${") else volume
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif source.startswith("${"):
                var = re.match(r"\$\{([A-Z_]+):\?", source)
                assert var and var.group(1) in HOST_DIRS, f"{name}: {volume}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists(), name


def test_every_image_built_here_has_one_builder() -> None:
    built = {svc["image"] for svc in services().values() if "build" in svc}
    for image in built:
        builders = [n for n, s in services().items() if s.get("image") == image and "build" in s]
        assert len(builders) == 1, (image, builders)
    used = {
        s["image"] for s in services().values() if s.get("image", "").startswith("imaging-cloud/")
    }
    assert used == built


def test_every_dependency_is_a_service_and_the_start_order_has_no_cycle() -> None:
    svcs = services()
    graph = {}
    for name, svc in svcs.items():
        needs = svc.get("depends_on", {})
        assert isinstance(needs, dict), f"{name}: depends_on without conditions"
        for dep, how in needs.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            assert how["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, (name, dep)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}, which has none"
        graph[name] = set(needs)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError if not
    assert order.index("postgres-init") < order.index("weed-filer-1") < order.index("central")


def test_only_the_gateway_publishes_ports_and_the_same_as_the_small_file() -> None:
    small = load(SMALL)["services"]["gateway"]["ports"]
    for name, svc in services().items():
        assert "network_mode" not in svc, name
        if name == "gateway":
            assert svc["ports"] == small == ["443:443"]
        else:
            assert "ports" not in svc, f"{name} publishes {svc['ports']}"


def test_every_long_running_node_restarts_and_has_a_healthcheck() -> None:
    for r in SHAPE:
        for name in nodes(r):
            svc = services()[name]
            assert svc.get("restart") == "unless-stopped", name
            assert svc["healthcheck"]["test"][0] == "CMD", name


def test_secrets_come_only_from_required_environment_variables() -> None:
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|BASIC_AUTH)[A-Z_]*:\s", line) and "${" not in line:
            raise AssertionError(f"secret without ${{VAR:?}}: {line.strip()}")
    references = re.findall(r"\$\{([A-Z0-9_]+)([^}]*)\}", text)
    optional = {n for n, rest in references if not rest.startswith(":?")}
    # the one setting with a default: an etcd member's first-start mode (docs/ha.md)
    assert optional == {"ETCD_INITIAL_CLUSTER_STATE"}
    assert "${ETCD_INITIAL_CLUSTER_STATE:-new}" in text


def test_images_are_the_small_files_and_pinned() -> None:
    small = {s.get("image") for s in load(SMALL)["services"].values()}
    for name, svc in services().items():
        image = svc["image"]
        if image.startswith(("imaging-cloud/", "quay.io/coreos/etcd:", "haproxy:")):
            continue
        assert image in small, f"{name}: {image} is not docker-compose.yml's"
    etcd = {services()[n]["image"] for n in nodes("etcd")}
    assert len(etcd) == 1 and re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", etcd.pop())
    assert re.fullmatch(r"haproxy:\d+\.\d+", services()["haproxy"]["image"])
    dockerfile = (HA_DIR / "Dockerfile.patroni").read_text()
    assert re.search(r"^FROM postgres:15$", dockerfile, re.M)
    assert "postgres:15" in small and "patroni" in dockerfile


def test_each_service_sees_only_its_own_secret_folder() -> None:
    mounted: dict[str, str] = {}
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            if volume.endswith(":/run/secrets:ro"):
                mounted.setdefault(name, volume.removesuffix(":/run/secrets:ro"))
    assert set(mounted) == {"central", "central-2", "indexer", "indexer-2", "indexer-migrate"}
    for name, source in mounted.items():
        folder = "indexer" if name == "indexer-migrate" else name
        assert source == f"${{KEYRING_DIR:?set KEYRING_DIR}}/{folder}", name


def dialled_hosts(text: str) -> set[str]:
    """Host names in URLs and host:port pairs of environment values and commands."""
    hosts = set(re.findall(r"(?://|@)([a-z][a-z0-9-]*):\d+", text))
    hosts |= set(
        re.findall(
            r"(?<![\w./-])([a-z][a-z0-9-]*):(?:2379|2380|5432|8000|8008|8042|8080|8333|8888|9000|9333)\b",
            text,
        )
    )
    return hosts


def test_every_host_a_service_dials_is_a_service_or_an_alias() -> None:
    known = set(services()) | aliases()
    for name, svc in services().items():
        text = " ".join([command(svc), *map(str, (svc.get("environment") or {}).values())])
        for host in dialled_hosts(text):
            assert host in known, f"{name} dials {host}"
    # the small file's client addresses are HAProxy's fronts
    assert {"postgres", "s3", "central-lb", "keycloak-lb"} <= set(
        services()["haproxy"]["networks"]["default"]["aliases"]
    )
    assert "postgres" not in services() and "seaweedfs" not in services()


def test_the_filer_store_written_for_the_small_file_reaches_the_primary(tmp_path: Path) -> None:
    from deploy.compose.seaweedfs_security import write

    write(tmp_path)
    store = tomllib.loads((tmp_path / "filer.toml").read_text())["postgres2"]
    assert (store["hostname"], store["port"]) == ("postgres", 5432)
    assert "postgres" in aliases()


def haproxy_servers(section: str) -> list[tuple[str, str, str]]:
    text = (HA_DIR / "haproxy.cfg").read_text()
    body = re.search(rf"^listen {section}\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert body, section
    return re.findall(r"^\s+server \S+ ([a-z0-9-]+):(\d+) check(.*)$", body.group(1), re.M)


def test_haproxy_fronts_every_node_of_each_replicated_service() -> None:
    text = (HA_DIR / "haproxy.cfg").read_text()
    pg = haproxy_servers("postgres")
    assert sorted(h for h, _port, _rest in pg) == nodes("patroni")
    assert all(port == "5432" and "port 8008" in rest for _h, port, rest in pg)
    assert "http-check send meth GET uri /primary" in text
    assert sorted(h for h, _p, _r in haproxy_servers("s3")) == nodes("weed-s3")
    assert sorted(h for h, _p, _r in haproxy_servers("central")) == nodes("central")
    assert sorted(h for h, _p, _r in haproxy_servers("keycloak")) == nodes("keycloak")
    assert "resolvers docker" in text and "127.0.0.11:53" in text


@pytest.mark.skipif(not shutil.which("haproxy"), reason="needs haproxy")
def test_haproxy_accepts_its_configuration(tmp_path: Path) -> None:
    env = {**os.environ, "CENTRAL_BASIC_AUTH": "Y2VudHJhbC1hZG1pbjpwdw=="}
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(HA_DIR / "haproxy.cfg")],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # names resolve only on the compose network: nothing else may be wrong
    lines = done.stderr.splitlines()
    warnings = [w for w in lines if "[WARNING]" in w and "could not resolve" not in w]
    assert not warnings, warnings


def patroni_conf() -> dict:
    return yaml.safe_load((HA_DIR / "patroni.yml").read_text())


def test_patroni_runs_synchronous_on_the_three_etcd_members() -> None:
    conf = patroni_conf()
    dcs = conf["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["ttl"] >= dcs["loop_wait"] + 2 * dcs["retry_timeout"]
    hosts = conf["etcd3"]["hosts"].split(",")
    assert hosts == [f"{n}:2379" for n in nodes("etcd")]
    for name in nodes("etcd"):
        env = services()[name]["environment"]
        assert env["ETCD_NAME"] == name
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{name}:2380"
        members = dict(m.split("=") for m in env["ETCD_INITIAL_CLUSTER"].split(","))
        assert members == {n: f"http://{n}:2380" for n in nodes("etcd")}
    subnet = load()["networks"]["db"]["ipam"]["config"][0]["subnet"]
    assert all(subnet in rule for rule in conf["postgresql"]["pg_hba"] if rule.startswith("host"))
    for name in nodes("patroni"):
        env = services()[name]["environment"]
        assert env["PATRONI_NAME"] == name
        assert env["PATRONI_POSTGRESQL_CONNECT_ADDRESS"] == f"{name}:5432"
        assert env["PATRONI_RESTAPI_CONNECT_ADDRESS"] == f"{name}:8008"
        assert (
            "./deploy/compose/ha/patroni.yml:/etc/patroni/patroni.yml:ro"
            in services()[name]["volumes"]
        )


@pytest.mark.skipif(not shutil.which("patroni"), reason="needs patroni")
def test_patroni_accepts_its_configuration(tmp_path: Path) -> None:
    """Patroni's own validator, with etcd's names (compose DNS only) made local: it connects
    to each etcd host, so one listening socket stands in for the members."""
    conf = patroni_conf()
    listener = socket.create_server(("127.0.0.1", 0))
    conf["etcd3"]["hosts"] = f"127.0.0.1:{listener.getsockname()[1]}"
    conf["postgresql"]["bin_dir"] = str(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
    path = tmp_path / "patroni.yml"
    path.write_text(yaml.safe_dump(conf))
    env = {**os.environ, **services()["pg-1"]["environment"]}
    done = subprocess.run(
        ["patroni", "--validate-config", str(path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    listener.close()
    assert done.returncode == 0, done.stdout + done.stderr


def test_seaweedfs_masters_form_one_raft_and_every_client_knows_all_three() -> None:
    masters = nodes("weed-master")
    peers = ",".join(f"{m}:9333" for m in masters)
    for name in masters:
        cmd = command(services()[name])
        assert flag(cmd, "peers") == peers and flag(cmd, "ip") == name
        assert flag(cmd, "defaultReplication") == "001" and "-disableHttp" in cmd.split()
    for name in nodes("weed-volume") + nodes("weed-filer"):
        assert flag(command(services()[name]), "master") == peers, name
    for name in nodes("weed-s3"):
        assert sorted(flag(command(services()[name]), "filer").split(",")) == [
            f"{f}:8888" for f in nodes("weed-filer")
        ]
    fsync = command(services()["seaweedfs-fsync"])
    assert f"-master={peers}" in fsync and "-fsync -apply" in fsync
    for name in ("central", "central-2"):
        assert services()[name]["depends_on"]["seaweedfs-fsync"] == {
            "condition": "service_completed_successfully"
        }


def test_keycloak_nodes_form_one_cluster_over_the_shared_database() -> None:
    for name in nodes("keycloak"):
        cmd = command(services()[name]).split()
        assert {"--cache=ispn", "--cache-stack=jdbc-ping"} <= set(cmd), name
        assert "--db-url=jdbc:postgresql://postgres:5432/keycloak" in cmd


def test_central_nodes_are_the_small_files_but_for_the_replicated_addresses() -> None:
    small = load(SMALL)["services"]
    for name in nodes("central"):
        ha_env, small_env = services()[name]["environment"], small[name]["environment"]
        differ = {k for k in ha_env.keys() | small_env.keys() if ha_env.get(k) != small_env.get(k)}
        assert differ == {"ORTHANC__IMAGING_CLOUD__STORAGE__S3__ENDPOINT"}, name
        assert ha_env["ORTHANC__IMAGING_CLOUD__STORAGE__S3__ENDPOINT"] == "http://s3:8333"
        assert services()[name]["volumes"] == small[name]["volumes"]
    orthanc = (ROOT / "central-orthanc/orthanc.json").read_text()
    assert re.search(r'"Lock":\s*false', orthanc)


def upstream(conf: str, name: str) -> list[str]:
    match = re.search(rf"upstream {name} \{{([^}}]*)\}}", conf)
    assert match, f"no upstream {name}"
    return re.findall(r"server ([a-z0-9-]+):\d+ max_fails=\d+ fail_timeout=\d+s;", match.group(1))


def test_the_gateway_balances_every_node_and_finds_them_at_fixed_addresses() -> None:
    gateway = services()["gateway"]
    template = (ROOT / "deploy/gateway/nginx.conf.template").read_text()
    conf = render_template(template, {k: str(v) for k, v in gateway["environment"].items()})
    assert upstream(conf, "central") == nodes("central")
    assert upstream(conf, "indexer") == nodes("indexer")
    assert upstream(conf, "keycloak") == nodes("keycloak")
    # nginx resolves upstream names once: each node keeps its address when replaced
    ipam = load()["networks"]["default"]["ipam"]["config"][0]
    subnet = ipaddress.IPv4Network(ipam["subnet"])
    dynamic = ipaddress.IPv4Network(ipam["ip_range"])
    assert dynamic.subnet_of(subnet)
    small = load(SMALL)["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert not subnet.overlaps(ipaddress.ip_network(small))
    fixed = {}
    for name in ["gateway", *nodes("central"), *nodes("indexer"), *nodes("keycloak")]:
        address = ipaddress.ip_address(services()[name]["networks"]["default"]["ipv4_address"])
        assert address in subnet and address not in dynamic, name
        fixed[name] = address
    assert len(set(fixed.values())) == len(fixed)
    for name in nodes("central") + nodes("indexer") + nodes("keycloak"):
        assert gateway["depends_on"][name] == {"condition": "service_healthy"}


def test_every_user_of_postgresql_waits_for_the_roles_made_on_the_primary() -> None:
    svcs = services()
    init = svcs["postgres-init"]
    assert init["environment"]["PGHOST"] == "postgres"
    assert init["depends_on"] == {"haproxy": {"condition": "service_healthy"}}
    assert init["volumes"] == load(SMALL)["services"]["postgres-init"]["volumes"]
    users = [
        name
        for name, svc in svcs.items()
        if name not in {"postgres-init", "haproxy"}
        and role(svc) != "patroni"
        and re.search(r"postgres(ql)?(\+psycopg)?://|POSTGRESQL__HOST|POSTGRES2", str(svc))
    ]
    assert set(nodes("central")) | set(nodes("keycloak")) | {"indexer-migrate"} <= set(users)
    for name in users:
        assert svcs[name]["depends_on"]["postgres-init"] == {
            "condition": "service_completed_successfully"
        }, name


def test_etcd_and_the_database_plane_are_shared_with_no_other_container() -> None:
    """etcd has no authentication and PostgreSQL's nodes take passwords only: their
    networks are internal, and only Patroni's nodes (and HAProxy, for the database) join."""
    nets = load()["networks"]
    assert nets["dcs"]["internal"] is True and nets["db"]["internal"] is True
    members: dict[str, set[str]] = {"dcs": set(), "db": set(), "default": set()}
    for name, svc in services().items():
        for net in svc.get("networks") or {"default": None}:
            members[net].add(name)
    assert members["dcs"] == set(nodes("etcd")) | set(nodes("patroni"))
    assert members["db"] == set(nodes("patroni")) | {"haproxy"}
    assert not (set(nodes("etcd")) | set(nodes("patroni"))) & members["default"]
