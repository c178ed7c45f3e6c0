"""The fleet's central side (#15) against the real stack: registration by heartbeat,
operators' scopes, rules validated with the edge's schema (invalid: 422, nothing stored),
the long poll woken within a second of a PUT, templates, stale alerts raised and cleared
through the alert path (row, log line, webhook by the outbox), signed releases and an
upgrade campaign, and an audit record of every call.

The demo edges heartbeat as gateway-h0001/-h0002 themselves, so the tests that need a
gateway nobody else drives use extra gateway accounts made in the stack's Keycloak
(bench/fleet_bench.py). Stale alerts need a short interval and uploads a release key: a
second indexer node on the stack's database with INDEXER_FLEET_HEARTBEAT_INTERVAL_S=1 and
the stack's release public key takes those calls (the stack's node keeps its defaults).
Run it under the stack lock.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import pytest
from imgcloud import release_bundle
from sqlalchemy import create_engine

from bench.fleet_bench import account_token, add_gateway_accounts
from deploy.release import ensure_key_pair
from deploy.stack.client import StackClient
from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context
from deploy.stack.ports import free_port
from deploy.stack.services.indexer import Indexer
from deploy.stack.settings import REPO_ROOT, StackSettings
from indexer.services import outbox
from indexer.services.fleet_stale import FleetLoop, fleet_loop

pytestmark = pytest.mark.integration

A, B = "H0001", "H0002"
SOLO, LOST = "T9001", "T9002"  # institutions of the extra accounts
SOLO_ID, LOST_ID = "gateway-t9001", "gateway-t9002"
BEAT = {
    "software_version": "2026.12.0-test",
    "orthanc_version": "1.12.10",
    "plugins": {"python": "7.0", "imaging-cloud": "2026.12.0"},
    "uptime_s": 12.0,
    "queue_depth": 4,
    "oldest_undelivered_age_s": 35.0,
    "failing_deliveries": 1,
    "failure_reasons": {"central-unreachable": 1},
    "last_delivery_at": "2026-12-08T02:00:00Z",
    "disk_free_bytes": 123456789,
    "cert_expiry": {"dicom_tls": "2027-12-01T00:00:00Z"},
    "error_counts": {"forward": 2},
    "rules_version": 0,
    "release": "2026.12.0",
}
RULES = {"compression": "keep", "forwarding_enabled": True, "push_poll_seconds": 15}


@pytest.fixture(scope="module")
def ctx(stack: StackClient) -> StackContext:
    return load_context(StackSettings.from_env(stack["STACK_DIR"]))


@pytest.fixture(scope="module")
def accounts(stack: StackClient, ctx: StackContext) -> dict[str, str]:
    """Tokens of the two extra gateway accounts, by gateway id."""
    made = add_gateway_accounts(ctx, [SOLO, LOST])
    return {client: account_token(stack, client, secret) for client, secret in made.items()}


@pytest.fixture(scope="module")
def edge(stack: StackClient, accounts: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    """Clients through the gateway with each extra account's token."""
    clients = {gid: stack.gateway(token) for gid, token in accounts.items()}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def admin(stack: StackClient, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["admin"]) as client:
        yield client


@pytest.fixture(scope="module")
def hadmin_a(stack: StackClient, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["hadmin_a"]) as client:
        yield client


@pytest.fixture(scope="module")
def quick(ctx: StackContext) -> Iterator[str]:
    """A second indexer node (one worker) with a 1 s heartbeat interval and the stack's
    release public key: its base URL (loopback, no gateway)."""
    port = free_port()
    _, public = ensure_key_pair(ctx.state)
    env = os.environ | Indexer(ctx).env()
    env |= {
        "INDEXER_FLEET_HEARTBEAT_INTERVAL_S": "1",
        "INDEXER_FLEET_RELEASE_PUBLIC_KEY": str(public),
    }
    log = open(ctx.state / "test-fleet-quick-indexer.log", "ab")
    argv = [str(REPO_ROOT / ".venv/bin/uvicorn"), "indexer.main:app", "--host", "127.0.0.1"]
    node = subprocess.Popen(
        [*argv, "--port", str(port)], env=env, cwd=REPO_ROOT, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert node.poll() is None and time.monotonic() < deadline, (
                "the second node did not start"
            )
            time.sleep(0.3)
        yield url
    finally:
        node.terminate()
        node.wait(timeout=30)
        log.close()


def db(ctx: StackContext) -> psycopg.Connection[Any]:
    return psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer"), autocommit=True)


def eventually(check: Any, timeout_s: float = 20.0, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# --- registry and scopes -------------------------------------------------------------


def test_the_first_heartbeat_registers_the_gateway(
    edge: dict[str, httpx.Client], admin: httpx.Client
) -> None:
    assert admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").status_code == 404
    answer = edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "rules_version": None,
        "upgrade": None,
        "interval_s": 30.0,
        "rules_long_poll": False,  # central's default: rules are fetched on the heartbeat
    }
    row = admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").json()
    assert row["institution"] == SOLO and row["keycloak_client"] == SOLO_ID
    assert row["software_version"] == "2026.12.0-test" and row["release"] == "2026.12.0"
    assert row["heartbeat"]["queue_depth"] == 4 and row["heartbeat"]["failure_reasons"] == {
        "central-unreachable": 1
    }
    assert row["stale"] is False and row["rules_applied"] == 0


def test_heartbeats_refuse_unknown_fields_and_take_an_older_edges(
    edge: dict[str, httpx.Client], admin: httpx.Client, ctx: StackContext
) -> None:
    refused = edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT | {"patient": "x"})
    assert refused.status_code == 422
    older = {"software_version": "2026.11.0", "queue_depth": 0}  # no rules_version, release...
    assert edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=older).status_code == 200
    row = admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").json()
    assert row["software_version"] == "2026.11.0" and row["heartbeat"] == older
    assert row["rules_applied"] == 0  # kept: an older edge's silence changes nothing
    with db(ctx) as conn:
        count = conn.execute(
            "SELECT count(*) FROM fleet_gateways WHERE gateway_id = %s", [SOLO_ID]
        ).fetchone()
    assert count == (1,)  # one row per gateway, however many heartbeats
    assert edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT).status_code == 200


def test_a_hospital_admin_sees_and_acts_on_their_own_gateways_only(
    gw: dict[str, httpx.Client], admin: httpx.Client, hadmin_a: httpx.Client
) -> None:
    for inst in (A, B):
        assert gw[inst].post("/api/v1/fleet/heartbeat", json=BEAT).status_code == 200
    mine = hadmin_a.get("/api/v1/fleet/gateways")
    assert mine.status_code == 200
    assert {g["gateway_id"] for g in mine.json()} == {"gateway-h0001"}
    assert hadmin_a.get("/api/v1/fleet/gateways/gateway-h0002").status_code == 404
    put = hadmin_a.put("/api/v1/fleet/gateways/gateway-h0002/rules", json={"document": RULES})
    assert put.status_code == 404
    group = hadmin_a.put("/api/v1/fleet/gateways/gateway-h0002/group", json={"group": "canary"})
    assert group.status_code == 404
    everyone = {g["gateway_id"] for g in admin.get("/api/v1/fleet/gateways").json()}
    assert {"gateway-h0001", "gateway-h0002", SOLO_ID} <= everyone
    # and an edge is not an operator
    assert gw[A].get("/api/v1/fleet/gateways").status_code == 403


# --- rules ---------------------------------------------------------------------------


def test_an_invalid_document_is_refused_naming_each_problem_and_nothing_is_stored(
    admin: httpx.Client, edge: dict[str, httpx.Client]
) -> None:
    before = admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}/rules/history").json()
    bad = {"compression": "gzip", "push_poll_seconds": 1, "unknown": True}
    answer = admin.put(f"/api/v1/fleet/gateways/{SOLO_ID}/rules", json={"document": bad})
    assert answer.status_code == 422
    places = {".".join(map(str, p["loc"])) for p in answer.json()["detail"]}
    assert places == {"document.compression", "document.push_poll_seconds", "document.unknown"}
    assert admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}/rules/history").json() == before
    assert edge[SOLO_ID].get("/api/v1/fleet/rules", params={"have": 0}).status_code == 204


def test_the_long_poll_returns_within_a_second_of_a_put(
    admin: httpx.Client, edge: dict[str, httpx.Client]
) -> None:
    got: dict[str, Any] = {}

    def poll() -> None:
        answer = edge[SOLO_ID].get("/api/v1/fleet/rules", params={"have": 0, "wait": 20})
        got["at"], got["answer"] = time.monotonic(), answer

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(2.0)  # the poll is waiting now
    assert "answer" not in got
    put_at = time.monotonic()
    put = admin.put(f"/api/v1/fleet/gateways/{SOLO_ID}/rules", json={"document": RULES})
    waiter.join(timeout=25)
    assert put.status_code == 201, put.text
    version = put.json()["version"]
    assert got["answer"].status_code == 200
    assert got["answer"].json() == {"version": version, "document": RULES | {"version": version}}
    assert got["at"] - put_at < 1.0, f"the poll returned {got['at'] - put_at:.2f} s after the PUT"
    history = admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}/rules/history").json()
    assert history[0]["version"] == version and history[0]["author"] == "platform.admin"
    assert history[0]["source"] == "direct"


def test_versions_move_past_what_the_edge_applied(
    admin: httpx.Client, edge: dict[str, httpx.Client]
) -> None:
    latest = edge[SOLO_ID].get("/api/v1/fleet/rules", params={"have": 0}).json()["version"]
    report = {"version": latest, "status": "applied"}
    assert edge[SOLO_ID].post("/api/v1/fleet/rules/report", json=report).status_code == 204
    assert admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").json()["rules_applied"] == latest
    # a local PUT at the edge took it to 40: central's next version is above that
    assert (
        edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT | {"rules_version": 40}).status_code
        == 200
    )
    put = admin.put(f"/api/v1/fleet/gateways/{SOLO_ID}/rules", json={"document": RULES})
    assert put.json()["version"] == 41
    refused = {
        "version": 41,
        "status": "refused",
        "reason": "AE titles not configured on this edge: X",
    }
    assert edge[SOLO_ID].post("/api/v1/fleet/rules/report", json=refused).status_code == 204
    row = admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").json()
    assert row["rules_refused"] == 41 and row["rules_refused_reason"].startswith("AE titles")
    unknown = {"version": 999, "status": "applied"}
    assert edge[SOLO_ID].post("/api/v1/fleet/rules/report", json=unknown).status_code == 404


def test_a_template_with_overrides_gives_each_gateway_its_version(
    admin: httpx.Client, edge: dict[str, httpx.Client], hadmin_a: httpx.Client
) -> None:
    template = {
        "compression": "jpeg-lossless",
        "forward_windows": [{"start": "20:00", "end": "06:00"}],
    }
    assert (
        admin.put("/api/v1/fleet/templates/night", json={"document": template}).status_code == 200
    )
    assert (
        hadmin_a.put("/api/v1/fleet/templates/night", json={"document": template}).status_code
        == 403
    )
    attach = admin.put(
        f"/api/v1/fleet/gateways/{SOLO_ID}/template",
        json={"template": "night", "overrides": {"forward_windows": [], "push_poll_seconds": 30}},
    )
    assert attach.status_code == 200, attach.text
    version = attach.json()["version"]
    got = edge[SOLO_ID].get("/api/v1/fleet/rules", params={"have": version - 1}).json()
    assert got["document"] == {
        "version": version,
        "compression": "jpeg-lossless",
        "forward_windows": [],
        "push_poll_seconds": 30,
    }
    # a template change that an attached gateway's overrides make invalid: nothing changes
    bad = admin.put(
        "/api/v1/fleet/templates/night",
        json={"document": template | {"push_poll_seconds": 1, "x": 1}},
    )
    assert bad.status_code == 422
    assert admin.get(f"/api/v1/fleet/gateways/{SOLO_ID}").json()["rules_latest"] == version
    changed = admin.put(
        "/api/v1/fleet/templates/night", json={"document": template | {"compression": "keep"}}
    )
    assert changed.json() == {"versions": {SOLO_ID: version + 1}}
    got = edge[SOLO_ID].get("/api/v1/fleet/rules", params={"have": version}).json()
    assert got["document"]["compression"] == "keep" and got["document"]["push_poll_seconds"] == 30


# --- stale alerts --------------------------------------------------------------------


def take_the_lease(ctx: StackContext, loop: FleetLoop) -> None:
    """The stack's own node holds the staleness lease (its loop has no webhook: the stack
    sets none). End its lease connection, as a node's death would: this test's loop, which
    looks every 0.3 s, takes the lease before that node's loop looks again (every 5 s)."""
    with db(ctx) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'imgcloud-fleet'"
        )
    assert eventually(lambda: loop.working, timeout_s=10), "the lease did not move to the test"


class Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_a_stale_gateway_raises_an_alert_that_clears_when_heartbeats_return(
    quick: str,
    accounts: dict[str, str],
    admin: httpx.Client,
    ctx: StackContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    engine = create_engine(Indexer(ctx).env()["INDEXER_DATABASE_URL"])
    loop = fleet_loop(engine, every_s=0.3, webhook=True, missed=3)
    loop.application_name = "imgcloud-fleet-test"  # told apart from the stack's nodes'
    deliverer = outbox.Deliverer(engine, f"http://127.0.0.1:{hook.server_port}/", every_s=0.2)
    caplog.set_level(logging.WARNING, logger="indexer.alerts")
    with httpx.Client(
        base_url=quick, headers={"Authorization": f"Bearer {accounts[LOST_ID]}"}
    ) as lost:
        try:
            loop.start()
            deliverer.start()
            take_the_lease(ctx, loop)
            answer = lost.post("/api/v1/fleet/heartbeat", json=BEAT)
            assert answer.json()["interval_s"] == 1.0
            started = time.monotonic()

            def open_alert() -> dict[str, Any] | None:
                alerts = admin.get("/api/v1/fleet/alerts", params={"open": "true"}).json()
                return next((a for a in alerts if a["gateway_id"] == LOST_ID), None)

            alert = eventually(open_alert, timeout_s=20)
            assert alert is not None, "no alert after 3 missed heartbeats"
            assert time.monotonic() - started >= 3.0  # not before 3 intervals
            assert alert["kind"] == "gateway-stale" and alert["institution"] == LOST
            assert admin.get(f"/api/v1/fleet/gateways/{LOST_ID}").json()["stale"] is True
            gateways = admin.get("/api/v1/fleet/gateways").json()
            assert gateways[0]["stale"] is True  # stale ones first
            assert eventually(lambda: [w for w in Webhook.received if w["kind"] == "gateway-stale"])
            posted = next(w for w in Webhook.received if w["kind"] == "gateway-stale")
            assert posted == {
                "alert_id": alert["id"],
                "kind": "gateway-stale",
                "gateway": LOST_ID,
                "owner": LOST,
            }
            lines = [r.getMessage() for r in caplog.records if "gateway-stale" in r.getMessage()]
            assert lines and LOST_ID in lines[0]
            # heartbeats return: cleared, once
            assert lost.post("/api/v1/fleet/heartbeat", json=BEAT).status_code == 200

            def cleared() -> bool:
                lost.post("/api/v1/fleet/heartbeat", json=BEAT)
                # the gateway is fresh at once; the loop clears its alert at its next round
                gateway = admin.get(f"/api/v1/fleet/gateways/{LOST_ID}").json()
                return gateway["stale"] is False and open_alert() is None

            assert eventually(cleared, timeout_s=10, every_s=0.5)
            every = admin.get("/api/v1/fleet/alerts").json()
            mine = [a for a in every if a["gateway_id"] == LOST_ID]
            assert len(mine) == 1 and mine[0]["cleared_at"] is not None
            assert eventually(lambda: [w for w in Webhook.received if w["kind"] == "gateway-back"])
            ack = admin.post(f"/api/v1/fleet/alerts/{alert['id']}/ack")
            assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "platform.admin"
        finally:
            loop.stop()
            deliverer.stop()
            loop.join(5)
            deliverer.join(5)
            hook.shutdown()
            engine.dispose()


# --- releases and upgrades -----------------------------------------------------------


def test_a_signed_release_is_ordered_downloaded_and_reported(
    quick: str,
    tokens: dict[str, str],
    ctx: StackContext,
    admin: httpx.Client,
    hadmin_a: httpx.Client,
    edge: dict[str, httpx.Client],
    tmp_path: Path,
) -> None:
    private, _ = ensure_key_pair(ctx.state)
    (tmp_path / "imgcloud").mkdir()
    (tmp_path / "imgcloud" / "__init__.py").write_text('__version__ = "9.9.9"\n')
    key = release_bundle.load_private_key(private.read_bytes())
    bundle = release_bundle.build_bundle(tmp_path, "9.9.9-test", key)
    stranger = release_bundle.build_bundle(
        tmp_path, "9.9.9-test", release_bundle.generate_private_key()
    )
    tampered = bundle.replace(b'__version__ = "9.9.9"', b'__version__ = "6.6.6"')
    assert tampered != bundle
    with httpx.Client(base_url=quick, headers={"Authorization": f"Bearer {tokens['admin']}"}) as up:
        for refused in (stranger, tampered, b"not a tar file"):
            assert up.post("/api/v1/fleet/releases", content=refused).status_code == 422
        listed = {r["release"] for r in admin.get("/api/v1/fleet/releases").json()}
        assert "9.9.9-test" not in listed  # (other tests' releases may be there)
        with httpx.Client(
            base_url=quick, headers={"Authorization": f"Bearer {tokens['hadmin_a']}"}
        ) as h:
            assert h.post("/api/v1/fleet/releases", content=bundle).status_code == 403
        stored = up.post("/api/v1/fleet/releases", content=bundle)
        assert stored.status_code == 201 and stored.json() == {"release": "9.9.9-test"}
        assert up.post("/api/v1/fleet/releases", content=bundle).status_code == 409
    order = {"release": "9.9.9-test", "target": {"gateways": [SOLO_ID]}}
    assert hadmin_a.post("/api/v1/fleet/upgrades", json=order).status_code == 404  # not theirs
    started = admin.post("/api/v1/fleet/upgrades", json=order)
    assert started.status_code == 201
    campaign = started.json()["id"]
    beat = edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT).json()
    assert beat["upgrade"] == {"release": "9.9.9-test"}
    ordered = edge[SOLO_ID].get("/api/v1/fleet/upgrade").json()
    assert ordered == {
        "release": "9.9.9-test",
        "sha256": release_bundle.sha256_hex(bundle),
        "size": len(bundle),
    }
    got = edge[SOLO_ID].get("/api/v1/fleet/releases/9.9.9-test/bundle")
    assert got.content == bundle and got.headers["content-type"] == "application/octet-stream"
    for status in ("downloading", "installed", "healthy"):
        report = {"release": "9.9.9-test", "status": status, "detail": f"step {status}"}
        assert edge[SOLO_ID].post("/api/v1/fleet/upgrade/report", json=report).status_code == 204
    watched = admin.get(f"/api/v1/fleet/upgrades/{campaign}").json()
    assert [(g["gateway_id"], g["status"]) for g in watched["gateways"]] == [(SOLO_ID, "healthy")]
    assert watched["counts"] == {"healthy": 1}
    assert hadmin_a.get(f"/api/v1/fleet/upgrades/{campaign}").status_code == 404
    assert edge[SOLO_ID].get("/api/v1/fleet/upgrade").status_code == 204  # done: nothing ordered
    assert edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT).json()["upgrade"] is None


def test_central_orders_no_release_older_than_a_gateway_runs(
    quick: str,
    tokens: dict[str, str],
    ctx: StackContext,
    admin: httpx.Client,
    edge: dict[str, httpx.Client],
    tmp_path: Path,
) -> None:
    """Review M3 at central: a release numbered below the one a gateway runs, or built
    without a number, is not ordered (422); a late report on an earlier campaign (a
    release found tampered at a later boot, M4) reaches that campaign's row."""
    private, _ = ensure_key_pair(ctx.state)
    key = release_bundle.load_private_key(private.read_bytes())
    (tmp_path / "imgcloud").mkdir()
    (tmp_path / "imgcloud" / "__init__.py").write_text('__version__ = "9.8"\n')
    now, tag = release_bundle.clock_sequence(), str(int(time.time()))
    newer, older = f"9.8.{tag}-new", f"9.8.{tag}-old"
    files = {
        newer: release_bundle.build_bundle(tmp_path, newer, key, sequence=now),
        older: release_bundle.build_bundle(tmp_path, older, key, sequence=now - 1000),
    }
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=quick, headers=headers, timeout=30) as up:
        for data in files.values():
            assert up.post("/api/v1/fleet/releases", content=data).status_code == 201
        # signed by the platform's key, but built before sequences: refused at upload
        with tarfile.open(fileobj=io.BytesIO(files[older])) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        manifest = json.loads(members["manifest.json"])
        del manifest["sequence"]
        manifest["release"] = f"9.8.{tag}-unnumbered"
        unnumbered = json.dumps(manifest).encode()
        members |= {"manifest.json": unnumbered, "manifest.sig": key.sign(unnumbered)}
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        refused = up.post("/api/v1/fleet/releases", content=out.getvalue())
        assert refused.status_code == 422 and "no release sequence" in refused.text
    beat = BEAT | {"software_version": newer, "release": newer}
    assert edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=beat).status_code == 200
    try:
        order = {"release": older, "target": {"gateways": [SOLO_ID]}}
        downgrade = admin.post("/api/v1/fleet/upgrades", json=order)
        assert downgrade.status_code == 422, downgrade.text
        assert SOLO_ID in downgrade.text and "downgrade" in downgrade.text
        assert edge[SOLO_ID].get("/api/v1/fleet/upgrade").status_code == 204  # nothing ordered
        # the same release as it runs is no downgrade; it ends healthy
        started = admin.post("/api/v1/fleet/upgrades", json=order | {"release": newer})
        assert started.status_code == 201, started.text
        campaign = started.json()["id"]
        report = {"release": newer, "status": "healthy", "detail": "after 3 s"}
        assert edge[SOLO_ID].post("/api/v1/fleet/upgrade/report", json=report).status_code == 204
        # a later boot finds it changed at rest: the report still lands, on that campaign
        late = {"release": newer, "status": "refused", "detail": "tampered at rest: x"}
        assert edge[SOLO_ID].post("/api/v1/fleet/upgrade/report", json=late).status_code == 204
        watched = admin.get(f"/api/v1/fleet/upgrades/{campaign}").json()
        assert [(g["status"], g["detail"]) for g in watched["gateways"]] == [
            ("refused", "tampered at rest: x")
        ]
        never = {"release": older, "status": "refused", "detail": "x"}
        assert edge[SOLO_ID].post("/api/v1/fleet/upgrade/report", json=never).status_code == 404
    finally:  # the gateway runs no release central holds again, as before this test
        assert edge[SOLO_ID].post("/api/v1/fleet/heartbeat", json=BEAT).status_code == 200


# --- the audit trail -----------------------------------------------------------------


def test_every_fleet_call_is_audited(ctx: StackContext) -> None:
    """Every route of the fleet that the tests above called left its record, with the
    gateway as the resource where there is one."""
    expected = {
        ("api.heartbeat", f"gateway:{SOLO_ID}"),
        ("api.rules_poll", f"gateway:{SOLO_ID}"),
        ("api.rules_report", f"gateway:{SOLO_ID}"),
        ("api.put_rules", f"gateway:{SOLO_ID}"),
        ("api.rules_history", f"gateway:{SOLO_ID}"),
        ("api.gateway", f"gateway:{SOLO_ID}"),
        ("api.set_template", f"gateway:{SOLO_ID}"),
        ("api.put_template", "fleet-template:night"),
        ("api.upgrade_poll", f"gateway:{SOLO_ID}"),
        ("api.release_bundle", f"gateway:{SOLO_ID}"),
        ("api.upgrade_report", f"gateway:{SOLO_ID}"),
        ("api.set_group", "gateway:gateway-h0002"),
        ("api.upload_release", "fleet-release:9.9.9-test"),
        ("api.gateways", None),
        ("api.alerts", None),
        ("api.ack_alert", None),
        ("api.start_upgrade", None),
        ("api.upgrade_status", None),
        ("api.releases", None),
    }

    def missing() -> set[tuple[str, str | None]]:
        with db(ctx) as conn:
            rows = conn.execute(
                "SELECT action, resource FROM audit_events WHERE action LIKE 'api.%%'"
            ).fetchall()
        seen = {(a, r) for a, r in rows} | {(a, None) for a, _ in rows}
        return expected - seen

    assert eventually(lambda: not missing(), timeout_s=10), missing()
    with db(ctx) as conn:
        refused = conn.execute(
            "SELECT outcome FROM audit_events WHERE action = 'api.put_rules' AND outcome = 422"
        ).fetchall()
    assert refused  # the invalid document's refusal is on record too
