"""The operator console (/console, #15) in Debian's Chromium against the real stack:
the platform administrator logs in through Keycloak, sees edge B's gateway go stale when
its Orthanc is stopped (and acknowledges the alert), pushes a rules change to edge A and
sees edge A apply it, and starts an upgrade of edge A and watches it finish.

Two parts of central are not yet run by the stack's indexer, so this module runs them
beside it on the stack's database, as tests/integration/test_fleet_central.py does: the
staleness loop (services/fleet_stale.fleet_loop), and a second indexer node holding the
platform's release public key, which takes the release upload (the stack's node has no
key and refuses every upload). The stack's node keeps its 30 s heartbeat interval, so a
stopped edge is stale after 90 s. Run it under the stack lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgcloud import release_bundle
from playwright.sync_api import Browser, Page
from sqlalchemy import create_engine

from deploy.release import ensure_key_pair
from deploy.stack.client import StackClient
from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.ports import free_port
from deploy.stack.services.indexer import Indexer
from deploy.stack.settings import REPO_ROOT, StackSettings
from indexer.services.fleet_stale import fleet_loop

from .conftest import new_page

EDGE_A, EDGE_B = "gateway-h0001", "gateway-h0002"
RELEASE = "2026.12.1-e2e"
UVICORN = [str(REPO_ROOT / ".venv/bin/uvicorn"), "indexer.main:app", "--host", "127.0.0.1"]


@pytest.fixture(scope="module")
def ctx(stack: StackClient) -> StackContext:
    return load_context(StackSettings.from_env(stack["STACK_DIR"]))


@pytest.fixture(scope="module")
def staleness(ctx: StackContext) -> Iterator[None]:
    engine = create_engine(Indexer(ctx).env()["INDEXER_DATABASE_URL"])
    loop = fleet_loop(engine, every_s=1.0, missed=3)
    loop.start()
    yield
    loop.stop()
    engine.dispose()


@pytest.fixture(scope="module")
def keyed_node(ctx: StackContext) -> Iterator[str]:
    """A second indexer node with the stack's release public key: its base URL."""
    port = free_port()
    _, public = ensure_key_pair(ctx.state)
    env = os.environ | Indexer(ctx).env() | {"INDEXER_FLEET_RELEASE_PUBLIC_KEY": str(public)}
    log = open(ctx.state / "test-console-indexer.log", "ab")
    node = subprocess.Popen(
        [*UVICORN, "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url) or node.poll() is not None, 60, "the second node")
        assert node.poll() is None, "the second indexer node ended"
        yield url
    finally:
        node.terminate()
        node.wait(timeout=30)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(every_s)


@pytest.fixture(scope="module")
def page(stack: StackClient, browser: Browser) -> Iterator[Page]:
    """The platform administrator's console, logged in through Keycloak."""
    one = new_page(browser)
    one.goto(stack["GATEWAY_URL"] + "/console/", wait_until="domcontentloaded")
    one.wait_for_selector("#username", timeout=60_000)
    one.fill("#username", stack["DEMO_ADMIN_USER"])
    one.fill("#password", stack["DEMO_ADMIN_PASSWORD"])
    one.click("#kc-login")
    one.wait_for_url(stack["GATEWAY_URL"] + "/console/", timeout=60_000)
    yield one
    one.context.close()


def status_of(page: Page, url: str, gateway_id: str) -> str | None:
    page.goto(url)
    row = page.locator(f'#gateways tr[data-gateway="{gateway_id}"]')
    return row.get_attribute("data-status") if row.count() else None


def test_the_console_lists_both_edges_online(stack: StackClient, page: Page) -> None:
    console = stack["GATEWAY_URL"] + "/console/"
    shown = page.goto(console)
    assert shown is not None and shown.status == 200, page.content()[:2000]
    token = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
    with stack.gateway(token["access_token"]) as api:
        listed = lambda: api.get("/api/v1/fleet/gateways").json()  # noqa: E731
        try:
            wait_for(lambda: len(listed()) >= 2, 90, "both edges' heartbeats at central")
        except AssertionError:
            raise AssertionError(f"central lists {listed()}") from None
    for gid in (EDGE_A, EDGE_B):

        def online(g: str = gid) -> bool:
            return status_of(page, console, g) == "online"

        try:
            wait_for(online, 90, f"{gid} online")
        except AssertionError:
            raise AssertionError(f"{gid} not online: {page.content()[-3000:]}") from None
    assert "网关" in page.content() and "Gateways" in page.content()
    assert page.locator("#gateways tbody tr").count() >= 2


def test_a_stopped_edge_turns_stale_first_in_the_list_and_raises_an_alert(
    stack: StackClient, page: Page, ctx: StackContext, staleness: None
) -> None:
    console = stack["GATEWAY_URL"] + "/console/"
    stop_service(ctx, "edge-b")
    try:
        started = time.monotonic()
        wait_for(lambda: status_of(page, console, EDGE_B) == "stale", 180, "edge B stale", 3)
        assert time.monotonic() - started > 30  # not before its heartbeats were missed
        first = page.locator("#gateways tbody tr").first
        assert first.get_attribute("data-gateway") == EDGE_B  # stale ones first
        assert "失联" in (first.text_content() or "")
        alert = page.locator(f'#alerts tr[data-gateway="{EDGE_B}"]')

        def raised() -> bool:
            page.goto(stack["GATEWAY_URL"] + "/console/alerts")
            return alert.count() > 0

        wait_for(raised, 30, "the stale alert")
        assert "gateway-stale" in (alert.first.text_content() or "")
        alert.first.locator("button").click()
        page.wait_for_load_state("load")
        assert page.locator(f'#alerts tr[data-gateway="{EDGE_B}"]').count() == 0
    finally:
        start_service(ctx, "edge-b")
    wait_for(lambda: status_of(page, console, EDGE_B) == "online", 120, "edge B back", 3)


def test_a_pushed_rules_change_is_applied_by_the_edge(stack: StackClient, page: Page) -> None:
    with stack.orthanc("EDGE_A") as edge:
        before = edge.get("/imaging-cloud/rules").json()
    draft = {k: v for k, v in before.items() if k != "version"}
    draft["push_poll_seconds"] = 11 if before.get("push_poll_seconds") != 11 else 12
    url = stack["GATEWAY_URL"] + f"/console/gateways/{EDGE_A}"
    page.goto(url)
    page.fill("#document", json.dumps(draft))
    page.click("#preview")
    page.wait_for_selector("#diff")
    assert f'+  "push_poll_seconds": {draft["push_poll_seconds"]}' in page.inner_text("#diff")
    page.click("#push")
    page.wait_for_selector("#pushed")
    pushed = int(page.url.rsplit("pushed=", 1)[1])
    assert pushed > int(before["version"])
    assert page.inner_text("#rules-latest") == str(pushed)

    def applied() -> bool:
        page.goto(url)
        return page.inner_text("#rules-applied") == str(pushed)

    wait_for(applied, 90, "edge A to apply the pushed version", 2)
    assert page.locator(f'#history tr[data-version="{pushed}"] .reported').inner_text() == (
        "applied"
    )
    with stack.orthanc("EDGE_A") as edge:
        now = edge.get("/imaging-cloud/rules").json()
    assert now["version"] == pushed and now["push_poll_seconds"] == draft["push_poll_seconds"]


def test_an_upgrade_started_in_the_console_finishes(
    stack: StackClient,
    page: Page,
    ctx: StackContext,
    keyed_node: str,
    tmp_path: Path,
) -> None:
    private, _ = ensure_key_pair(ctx.state)
    src = tmp_path / "release"
    shutil.copytree(
        REPO_ROOT / "orthanc-plugins", src, ignore=shutil.ignore_patterns("__pycache__")
    )
    key = release_bundle.load_private_key(private.read_bytes())
    bundle = release_bundle.build_bundle(src, RELEASE, key)
    admin = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
    admin_token = admin["access_token"]
    uploaded = httpx.post(
        f"{keyed_node}/api/v1/fleet/releases",
        content=bundle,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    assert uploaded.status_code == 201, uploaded.text
    page.goto(stack["GATEWAY_URL"] + "/console/upgrades")
    page.select_option("#release", RELEASE)
    page.check(f'input[name="gateway"][value="{EDGE_A}"]')
    page.click("#start")
    page.wait_for_url("**/console/upgrades/*")
    assert page.locator(f'#targets tr[data-gateway="{EDGE_A}"]').count() == 1

    def finished() -> str | None:
        page.reload()
        state = page.locator("#state").get_attribute("data-finished")
        row = page.locator(f'#targets tr[data-gateway="{EDGE_A}"]')
        return row.get_attribute("data-status") if state == "yes" else None

    assert wait_for(finished, 300, "the upgrade to finish", 5) == "healthy"
