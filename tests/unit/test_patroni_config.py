"""The HA topology's PostgreSQL configuration (etcd, Patroni, HAProxy), generated without
starting anything: loopback only, synchronous replication, the proxy's health checks."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.stack.context import StackContext
from deploy.stack.launcher import start_groups
from deploy.stack.ports import port_names
from deploy.stack.secrets_store import SECRET_NAMES
from deploy.stack.services.etcd import Etcd, etcd_argv
from deploy.stack.services.ha_proxy import HAPROXY_BIN, Backend, Front, HaProxy
from deploy.stack.services.patroni import (
    LOOP_WAIT_S,
    RETRY_TIMEOUT_S,
    TTL_S,
    PatroniNode,
    patroni_config,
    postgres_ha_services,
)
from deploy.stack.services.postgres import SERVER_SETTINGS, Postgres
from deploy.stack.settings import StackSettings

ADDRESS = re.compile(r"(?:https?://)?([0-9A-Za-z.\-\[\]:]+):(\d+)$")


@pytest.fixture
def ctx(tmp_path: Path) -> StackContext:
    names = port_names(2, 2, ha=True)
    return StackContext(
        settings=StackSettings(state_dir=tmp_path, cache_dir=tmp_path, topology="ha"),
        ports={name: 21000 + i for i, name in enumerate(names)},
        secrets={name: f"secret-{name}" for name in SECRET_NAMES},
        pki={},
    )


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


def addresses(value: Any) -> list[tuple[str, int]]:
    found = []
    for text in strings(value):
        match = ADDRESS.fullmatch(text)
        if match:
            found.append((match.group(1), int(match.group(2))))
    return found


def test_patroni_listens_and_reaches_etcd_on_loopback_only(ctx: StackContext) -> None:
    for node in (1, 2):
        config = patroni_config(ctx, node, ctx.state / f"node-{node}")
        found = addresses(config)
        assert {host for host, _ in found} == {"127.0.0.1"}
        ports = {port for _, port in found}
        assert ctx.ports[f"patroni_{node}_api"] in ports
        assert ctx.ports[f"pg_node_{node}"] in ports
        assert {ctx.ports[f"etcd_{n}_client"] for n in (1, 2, 3)} <= ports
        assert config["postgresql"]["listen"] == f"127.0.0.1:{ctx.ports[f'pg_node_{node}']}"
        for rule in config["postgresql"]["pg_hba"]:
            kind = rule.split()[0]
            assert kind == "local" or (kind == "host" and rule.split()[3] == "127.0.0.1/32")
            assert "trust" not in rule


def test_the_two_nodes_differ_only_in_their_own_addresses(ctx: StackContext) -> None:
    one = patroni_config(ctx, 1, ctx.state / "node-1")
    two = patroni_config(ctx, 2, ctx.state / "node-2")
    assert one["name"] != two["name"]
    assert one["restapi"]["listen"] != two["restapi"]["listen"]
    assert one["bootstrap"] == two["bootstrap"]
    assert one["etcd3"] == two["etcd3"]
    assert one["scope"] == two["scope"]


def test_commits_wait_for_the_synchronous_standby_and_only_it_is_promoted(
    ctx: StackContext,
) -> None:
    dcs = patroni_config(ctx, 1, ctx.state / "node-1")["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert dcs["postgresql"]["use_pg_rewind"] is True
    # Patroni's rule: the leader key must outlive a loop and two retries.
    assert dcs["ttl"] == TTL_S >= LOOP_WAIT_S + 2 * RETRY_TIMEOUT_S
    # Both nodes run the small stack's server settings (logging without values included).
    assert SERVER_SETTINGS.items() <= dcs["postgresql"]["parameters"].items()


def test_patroni_uses_the_stacks_superuser_and_a_replication_secret_of_its_own(
    ctx: StackContext,
) -> None:
    auth = patroni_config(ctx, 1, ctx.state / "node-1")["postgresql"]["authentication"]
    assert auth["superuser"] == {
        "username": "postgres",
        "password": ctx.secrets["postgres_superuser"],
    }
    replication = auth["replication"]["password"]
    assert len(replication) == 32 and replication not in ctx.secrets.values()
    # The same on the next start (kept in the state directory, private).
    again = patroni_config(ctx, 2, ctx.state / "node-2")["postgresql"]["authentication"]
    assert again["replication"]["password"] == replication
    assert (ctx.state / "secrets-ha.json").stat().st_mode & 0o077 == 0


def test_etcd_members_form_one_cluster_on_loopback(ctx: StackContext) -> None:
    argvs = [etcd_argv(ctx, n, ctx.state / "etcd" / str(n)) for n in (1, 2, 3)]
    for argv in argvs:
        urls = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--") and "url" in arg]
        assert urls and all(url.startswith("http://127.0.0.1:") for url in urls)
        cluster = next(arg for arg in argv if arg.startswith("--initial-cluster="))
        members = cluster.split("=", 1)[1].split(",")
        assert [m.split("=")[0] for m in members] == ["etcd-1", "etcd-2", "etcd-3"]
        assert all(m.split("=")[1].startswith("http://127.0.0.1:") for m in members)
    assert len({a for argv in argvs for a in argv if a.startswith("--listen-client")}) == 3


def listen_sections(config: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in config.splitlines():
        if line.startswith("listen "):
            current = sections.setdefault(line.split()[1], [])
        elif not line.startswith(" "):
            current = None
        elif current is not None:
            current.append(line.strip())
    return sections


def test_the_postgres_front_follows_patronis_primary(ctx: StackContext) -> None:
    section = listen_sections(HaProxy(ctx).config())["postgres"]
    assert f"bind 127.0.0.1:{ctx.ports['postgres']}" in section
    assert "mode tcp" in section
    assert "option httpchk OPTIONS /primary" in section
    assert "http-check expect status 200" in section
    defaults = next(line for line in section if line.startswith("default-server"))
    assert "on-marked-down shutdown-sessions" in defaults
    inter = re.search(r"\binter (\d+)s", defaults)
    assert inter and int(inter.group(1)) <= 2
    servers = [line for line in section if line.startswith("server ")]
    assert servers == [
        f"server pg{n} 127.0.0.1:{ctx.ports[f'pg_node_{n}']} check port "
        f"{ctx.ports[f'patroni_{n}_api']}"
        for n in (1, 2)
    ]


def test_the_s3_front_checks_each_node_and_takes_any_status_below_500(
    ctx: StackContext,
) -> None:
    section = listen_sections(HaProxy(ctx, s3_front=True).config())["weed_s3"]
    assert f"bind 127.0.0.1:{ctx.ports['weed_s3']}" in section
    servers = [line for line in section if line.startswith("server ")]
    assert servers == [
        f"server s3_{n} 127.0.0.1:{ctx.ports[f'weed_s3_node_{n}']} check" for n in (1, 2)
    ]
    assert "option httpchk GET /" in section
    expect = next(line for line in section if line.startswith("http-check expect rstatus"))
    pattern = re.compile(expect.split()[-1])
    assert all(pattern.search(code) for code in ("200", "204", "301", "403", "404", "499"))
    assert not any(pattern.search(code) for code in ("500", "502", "503"))


def test_without_the_s3_front_the_proxy_leaves_the_s3_port_alone(ctx: StackContext) -> None:
    proxy = HaProxy(ctx, s3_front=False)
    assert "weed_s3" not in listen_sections(proxy.config())
    assert str(ctx.ports["weed_s3"]) not in proxy.config()
    assert proxy.ports == ("postgres", "ha_proxy_stats")
    assert HaProxy(ctx).ports == ("postgres", "weed_s3", "ha_proxy_stats")


def test_the_proxy_binds_loopback_only(ctx: StackContext) -> None:
    binds = [line.split()[1] for line in HaProxy(ctx).config().splitlines() if "bind " in line]
    assert len(binds) == 3
    assert all(bind.startswith("127.0.0.1:") for bind in binds)


@pytest.mark.skipif(not HAPROXY_BIN.exists(), reason="haproxy not installed (make install)")
def test_haproxy_accepts_the_generated_configuration(ctx: StackContext, tmp_path: Path) -> None:
    for proxy in (HaProxy(ctx), HaProxy(ctx, s3_front=False)):
        path = tmp_path / "haproxy.cfg"
        path.write_text(proxy.config())
        checked = subprocess.run(
            [str(HAPROXY_BIN), "-c", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr


def test_services_start_as_three_groups_etcd_then_patroni_then_the_proxy(
    ctx: StackContext,
) -> None:
    groups = start_groups(postgres_ha_services(ctx))
    assert [[svc.name for svc in group] for group in groups] == [
        ["etcd-1", "etcd-2", "etcd-3"],
        ["patroni-1", "patroni-2"],
        ["ha-proxy"],
    ]
    assert all(type(svc) is Etcd for svc in groups[0])
    assert all(type(svc) is PatroniNode for svc in groups[1])
    assert type(groups[2][0]) is HaProxy
    assert all(svc.user() == "postgres" for svc in groups[1])
    assert groups[2][0].provision_when_running is True


def test_the_small_stacks_postgres_runs_exactly_as_before(ctx: StackContext) -> None:
    pg = Postgres(ctx)
    assert pg.argv() == [
        "/usr/lib/postgresql/15/bin/postgres",
        "-D",
        str(ctx.state / "pg" / "data"),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"port={ctx.ports['postgres']}",
        "-c",
        f"unix_socket_directories={ctx.state / 'pg' / 'run'}",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=128MB",
        "-c",
        "log_min_messages=warning",
        "-c",
        "log_error_verbosity=terse",
        "-c",
        "log_min_error_statement=panic",
        "-c",
        "log_parameter_max_length_on_error=0",
        "-c",
        "log_parameter_max_length=0",
    ]


def test_there_are_two_postgres_nodes_and_three_etcd_members(ctx: StackContext) -> None:
    for node in (0, 3):
        with pytest.raises(ValueError):
            PatroniNode(ctx, node)
    for node in (0, 4):
        with pytest.raises(ValueError):
            Etcd(ctx, node)


def test_further_fronts_join_the_same_proxy(ctx: StackContext) -> None:
    central = Front(
        name="central_lb",
        port=ctx.ports["central_lb"],
        backends=(Backend("central_1", ctx.ports["central_http"]),),
        check=("option httpchk GET /",),
        balance="roundrobin",
        idle_timeout="5m",
        rise=2,
    )
    proxy = HaProxy(ctx, s3_front=False, extra_fronts=[central])
    sections = listen_sections(proxy.config())
    assert list(sections) == ["postgres", "central_lb", "stats"]
    assert f"server central_1 127.0.0.1:{ctx.ports['central_http']} check" in sections["central_lb"]
    assert proxy.ports == ("postgres", "central_lb", "ha_proxy_stats")
