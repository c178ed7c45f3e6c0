"""Keycloak's two HA nodes form one cluster on loopback and keep sessions across a crash.

In a scratch HA state directory: the stack's PostgreSQL (the small stack's service,
provisioned as `up` does it) and both Keycloak nodes, started together as the launcher does.
Checks, in order: both nodes see a cluster of two; every socket either JVM listens on is on
127.0.0.1 and is one of its own ports (HTTP, management, JGroups transport and failure
detection); a session made on node 1 is refreshed at node 2; after kill -9 of node 1, node 2
still issues tokens and refreshes that session; a restarted node 1 rejoins the cluster and
refreshes it too. Prints the seconds each step took and each JVM's RSS. Run it under the
stack lock; everything started is stopped at the end, also on failure.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auth.provision import load_demo_users
from deploy.stack.context import CLI_CLIENT_ID, REALM, StackContext
from deploy.stack.launcher import load_context
from deploy.stack.processes import stop
from deploy.stack.services.keycloak_cluster import KeycloakNode, keycloak_ha_services
from deploy.stack.services.postgres import Postgres
from deploy.stack.settings import StackSettings

from ..support.scratch_stack import scratch_state, start, stop_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

VIEW = re.compile(
    r"ISPN00009[34]: Received new(?:, MERGED)? cluster view for channel \S+: "
    r"(\[[^\]]*\] \((\d+)\) \[[^\]]*\])"
)
CLUSTER_TIMEOUT_S = 90.0
TOKEN_TIMEOUT_S = 120.0


@pytest.fixture
def cluster() -> Iterator[tuple[StackContext, list[KeycloakNode]]]:
    """PostgreSQL and both Keycloak nodes of a scratch HA stack, healthy and provisioned."""
    with scratch_state("test-keycloak-ha-") as state:
        ctx = load_context(dataclasses.replace(StackSettings.from_env(str(state)), topology="ha"))
        pg = Postgres(ctx)
        nodes = [svc for svc in keycloak_ha_services(ctx) if isinstance(svc, KeycloakNode)]
        assert len(nodes) == 2
        try:
            start(pg)
            began = time.monotonic()
            for node in nodes:  # together, as the launcher starts one component's nodes
                node.prepare()
                node.start()
            for node in nodes:
                node.wait_healthy(ctx.settings.start_timeout_s)
                node.after_healthy()
                print(f"{node.name}: healthy {time.monotonic() - began:.1f} s after start")
            yield ctx, nodes
        finally:
            for node in reversed(nodes):
                stop_service(node)
            stop_service(pg)


def current_log(node: KeycloakNode) -> str:
    """The node's log since its latest start."""
    text = node.log.read_text(errors="replace")
    return text[text.rfind("\n==== ") :]


def last_view(node: KeycloakNode) -> tuple[int, str] | None:
    """(members, view) of the latest cluster view the node logged since it started."""
    views = VIEW.findall(current_log(node))
    return (int(views[-1][1]), views[-1][0]) if views else None


def wait_view(node: KeycloakNode, members: int, timeout_s: float = CLUSTER_TIMEOUT_S) -> float:
    """Seconds until the node's latest view has `members` members."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        view = last_view(node)
        if view is not None and view[0] == members:
            return time.monotonic() - began
        time.sleep(0.2)
    raise AssertionError(f"{node.name}: no view of {members} in {timeout_s:.0f} s: {view}")


def group_pids(leader: int) -> list[int]:
    """Every process of the process group `leader` leads (kc.sh and its JVM)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == leader:
            pids.append(int(entry.name))
    return pids


def rss_mb(node: KeycloakNode) -> float:
    pid = node.pid()
    assert pid is not None
    total_kb = 0
    for member in group_pids(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def listening(node: KeycloakNode) -> set[str]:
    """proto:address:port of every TCP and UDP socket the node's processes listen on."""
    pid = node.pid()
    assert pid is not None
    pids = set(group_pids(pid))
    out = subprocess.run(
        ["ss", "-H", "-ltunp"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = set()
    for line in out.splitlines():
        cols = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            # a JVM's IPv6 socket bound to 127.0.0.1 shows as the IPv4-mapped address
            found.add(f"{cols[0]}:{cols[4].replace('[::ffff:127.0.0.1]', '127.0.0.1')}")
    return found


def token(base: str, form: dict[str, str], timeout_s: float = 10.0) -> httpx.Response:
    return httpx.post(
        f"{base}/realms/{REALM}/protocol/openid-connect/token", data=form, timeout=timeout_s
    )


def url(node: KeycloakNode) -> str:
    return f"{node.ctx.http(node.ports[0])}/auth"


def password_form(ctx: StackContext) -> dict[str, str]:
    user = load_demo_users(ctx.secrets)[0]
    return {
        "grant_type": "password",
        "client_id": CLI_CLIENT_ID,
        "username": user.username,
        "password": user.password,
        "scope": "openid",
    }


def refresh(node: KeycloakNode, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "client_id": CLI_CLIENT_ID}
    return token(url(node), form | {"refresh_token": refresh_token})


def until_ok(call, timeout_s: float = TOKEN_TIMEOUT_S) -> tuple[float, httpx.Response, int]:
    """(seconds, response, failed attempts) until call() answers 200."""
    began, failures = time.monotonic(), 0
    while True:
        try:
            response = call()
            if response.status_code == 200:
                return time.monotonic() - began, response, failures
            last = f"HTTP {response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        failures += 1
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"no 200 in {timeout_s:.0f} s: {last}")
        time.sleep(0.1)


def test_two_nodes_one_cluster_on_loopback_survive_a_crash(
    cluster: tuple[StackContext, list[KeycloakNode]],
) -> None:
    ctx, (one, two) = cluster
    for node in (one, two):
        wait_view(node, 2)
        print(f"{node.name}: cluster view {last_view(node)}")

    # Every listening socket of both JVMs: on loopback, and only the node's own ports
    # (checked at the end, so that a failure here still measures the rest).
    wrong_sockets: list[str] = []
    for node in (one, two):
        own = node.listening_ports()
        sockets = listening(node)
        print(f"{node.name}: listening on {sorted(sockets)}")
        if sockets != {f"tcp:127.0.0.1:{port}" for port in own}:
            wrong_sockets.append(f"{node.name}: {sorted(sockets)}, expected ports {sorted(own)}")

    rss = {node.name: rss_mb(node) for node in (one, two)}
    print("RSS with the cluster formed: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))

    # A session made on node 1 is refreshed at node 2.
    login = token(url(one), password_form(ctx))
    assert login.status_code == 200, login.text
    refreshed = refresh(two, login.json()["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["session_state"] == login.json()["session_state"]
    latest = refreshed.json()["refresh_token"]

    # kill -9 node 1: node 2 goes on issuing tokens and refreshing node 1's session.
    pid = one.pid()
    assert pid is not None
    killed = time.monotonic()
    stop(ctx.settings.run_dir, one.name, sig=signal.SIGKILL, timeout_s=10)
    token_s, _, token_failures = until_ok(lambda: token(url(two), password_form(ctx)))
    refresh_s, after_kill, _ = until_ok(lambda: refresh(two, latest))
    refresh_s += token_s
    assert after_kill.json()["session_state"] == login.json()["session_state"]
    latest = after_kill.json()["refresh_token"]
    wait_view(two, 1)
    left_s = time.monotonic() - killed
    print(
        f"after kill -9 of {one.name}: node 2 issued a token in {token_s:.2f} s "
        f"({token_failures} failed attempts), refreshed node 1's session "
        f"{refresh_s:.2f} s after the kill, "
        f"dropped node 1 from its view within {left_s:.2f} s ({last_view(two)})"
    )
    assert token_failures == 0, "node 2 refused token requests after node 1 died"
    assert not os.path.exists(f"/proc/{pid}")

    # Node 1 restarts and rejoins; the session made before the crash refreshes there too.
    restarted = time.monotonic()
    start(one, then_provision=False)
    ready_s = time.monotonic() - restarted
    wait_view(two, 2)
    wait_view(one, 2)
    rejoin_s = time.monotonic() - restarted
    # Measured, not assumed, right after the rejoin: a run whose failure detection did not
    # work (node 1 left the view 43 s after its death) had node 1 answer "Session doesn't
    # have required client" here.
    back_s, back, back_failures = until_ok(lambda: refresh(one, latest), timeout_s=60)
    assert back.json()["session_state"] == login.json()["session_state"]
    fresh_s, _, fresh_failures = until_ok(lambda: token(url(one), password_form(ctx)))
    # Refresh tokens are single-use in the realm: the one node 2 spent is refused here.
    spent = refresh(one, login.json()["refresh_token"])
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant", spent.text
    print(
        f"restarted {one.name}: healthy in {ready_s:.1f} s, cluster of 2 again "
        f"{rejoin_s:.1f} s after the restart ({last_view(two)}); it refreshed the session "
        f"after {back_s:.2f} s more ({back_failures} refused attempts) and issued a new "
        f"token in {fresh_s:.2f} s ({fresh_failures} refused)"
    )
    rss = {node.name: rss_mb(node) for node in (one, two)}
    print("RSS after the rejoin: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    for node in (one, two):
        own = node.listening_ports()
        if listening(node) != {f"tcp:127.0.0.1:{port}" for port in own}:
            wrong_sockets.append(f"{node.name} after the rejoin: {sorted(listening(node))}")
    assert not wrong_sockets
