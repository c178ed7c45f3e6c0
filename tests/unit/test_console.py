"""The operator console's pages (indexer/api/routes/console.py) and what they show
(services/console_views.py). The fleet services the pages call are replaced by recording
stand-ins here (their own behaviour is tested against PostgreSQL in
tests/integration/test_fleet_*.py); the pages' login, templates and forms are real."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from indexer.api import deps
from indexer.api.errors import install as install_errors
from indexer.api.routes import console
from indexer.db import get_session
from indexer.errors import NotFound
from indexer.security.auth import Principal
from indexer.services import console_views, fleet_registry, fleet_rules, fleet_stale
from indexer.services import fleet_upgrades as upgrades
from indexer.services.fleet_registry import GatewayOut
from indexer.services.fleet_rules import RulesVersionOut
from indexer.services.fleet_upgrades import TargetOut, UpgradeOut
from indexer.web import session

GATEWAY = "https://gateway.example:8443"
ADMIN = Principal("s1", "platform.admin", "PLATFORM", frozenset({"platform-admin"}))
HADMIN = Principal("s2", "hadmin.a", "H0001", frozenset({"hospital-admin"}))
CLINICIAN = Principal("s3", "clinician.b", "H0002", frozenset({"clinician"}))
TOKENS = {"admin": ADMIN, "hadmin": HADMIN, "clinician": CLINICIAN}
NOW = dt.datetime.now(dt.UTC)
RULES = {"compression": "keep", "forwarding_enabled": True, "push_poll_seconds": 10}


def gateway(gid: str, *, stale: bool = False, failing: int = 0, applied: int | None = 2) -> Any:
    return GatewayOut(
        gateway_id=gid,
        institution=gid.removeprefix("gateway-").upper(),
        keycloak_client=gid,
        group=None,
        software_version="2026.12.0",
        release="2026.12.0",
        rules_latest=2,
        rules_applied=applied,
        rules_refused=None,
        rules_refused_reason=None,
        template=None,
        first_seen=NOW,
        last_heartbeat_at=NOW - dt.timedelta(seconds=200 if stale else 5),
        interval_s=30.0,
        stale=stale,
        upgrade_id=None,
        heartbeat={
            "queue_depth": 4,
            "failing_deliveries": failing,
            "failure_reasons": {"central-unreachable": failing} if failing else {},
            "last_delivery_at": "2026-12-08T02:00:00Z",
            "oldest_undelivered_age_s": 35.0,
        },
    )


def version(n: int, document: dict[str, Any], reported: str | None = "applied") -> Any:
    return RulesVersionOut(
        version=n,
        author="platform.admin",
        created_at=NOW,
        source="direct",
        document={**document, "version": n},
        reported=reported,
        reported_reason=None,
        reported_at=None,
    )


class Verifier:
    def verify(self, token: str) -> Principal:
        return TOKENS[token]


class Fleet:
    """What the pages asked of the fleet services, and what those answer."""

    def __init__(self) -> None:
        self.gateways = [gateway("gateway-h0002", stale=True), gateway("gateway-h0001", failing=3)]
        self.history = [version(2, RULES)]
        self.pushed: list[tuple[str, str, dict[str, Any]]] = []
        self.acked: list[tuple[str, int]] = []
        self.started: list[tuple[str, str, dict[str, Any]]] = []
        self.upgrade_status = "downloading"

    def get_gateway(self, _db: object, who: Principal, gid: str) -> Any:
        for g in self.gateways:
            if g.gateway_id == gid:
                return g
        raise NotFound("no such gateway")

    def put_rules(self, _db: object, who: Principal, gid: str, document: Any) -> int:
        found = fleet_rules.problems_of(fleet_rules.versioned(document, 1))
        if found:
            raise fleet_rules.RulesInvalid(found)
        self.pushed.append((who.username, gid, document))
        return 3

    def rules_version(self, _db: object, _who: Principal, _gid: str, n: int) -> Any:
        for v in self.history:
            if v.version == n:
                return v
        raise NotFound("no such rules version")

    def start(self, _db: object, who: Principal, release: str, target: Any) -> int:
        self.started.append((who.username, release, target.model_dump(exclude_none=True)))
        return 7

    def status(self, _db: object, _who: Principal, upgrade_id: int) -> Any:
        target = TargetOut(
            gateway_id="gateway-h0001",
            institution="H0001",
            status=self.upgrade_status,
            detail=None,
            updated_at=NOW,
            release_running="2026.12.0",
        )
        return UpgradeOut(
            id=upgrade_id,
            release="2026.12.1",
            target={"gateways": ["gateway-h0001"]},
            created_by="platform.admin",
            created_at=NOW,
            gateways=[target],
            counts={self.upgrade_status: 1},
        )


class Db:
    def rollback(self) -> None:
        pass


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Fleet:
    fake = Fleet()
    monkeypatch.setattr(deps, "get_verifier", lambda: Verifier())
    monkeypatch.setattr(fleet_registry, "list_gateways", lambda _db, _who: fake.gateways)
    monkeypatch.setattr(fleet_registry, "get_gateway", fake.get_gateway)
    monkeypatch.setattr(fleet_rules, "rules_history", lambda *_a, **_k: fake.history)
    monkeypatch.setattr(fleet_rules, "rules_version", fake.rules_version)
    monkeypatch.setattr(fleet_rules, "put_rules", fake.put_rules)
    monkeypatch.setattr(fleet_stale, "open_alerts", lambda _db, _who: [])
    monkeypatch.setattr(
        fleet_stale, "ack_alert", lambda _db, who, n: fake.acked.append((who.username, n))
    )
    monkeypatch.setattr(
        upgrades,
        "list_releases",
        lambda _db, _who: [
            {"release": "2026.12.1", "sha256": "ab" * 32, "size": 10, "uploaded_at": NOW}
        ],
    )
    monkeypatch.setattr(upgrades, "start_upgrade", fake.start)
    monkeypatch.setattr(upgrades, "upgrade_status", fake.status)
    return fake


@pytest.fixture
def client(fleet: Fleet) -> TestClient:
    app = FastAPI()
    install_errors(app)
    session.install(app)
    app.state.settings = SimpleNamespace(
        gateway_url=GATEWAY, oidc_issuer=GATEWAY + "/auth/realms/imaging-cloud"
    )
    app.dependency_overrides[get_session] = lambda: Db()
    app.include_router(console.router)
    web = TestClient(app, base_url=GATEWAY, follow_redirects=False)
    web.cookies.set("imgcloud_web_console", "admin")
    return web


def post(client: TestClient, path: str, data: dict[str, Any]) -> Any:
    return client.post(path, data=data, headers={"Origin": GATEWAY})


def test_the_gateway_list_shows_stale_and_failing_gateways(client: TestClient) -> None:
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert 'data-gateway="gateway-h0002" data-status="stale"' in html
    assert 'data-gateway="gateway-h0001" data-status="online"' in html
    # the failing deliveries table names the gateway and its reasons
    failing = html.split('id="failing"')[1]
    assert "gateway-h0001" in failing and "central-unreachable: 3" in failing
    assert "gateway-h0002" not in failing


def test_a_page_without_a_session_or_of_another_role_is_not_shown(client: TestClient) -> None:
    client.cookies.clear()
    assert client.get("/console/").headers["location"] == "/console/login"
    client.cookies.set("imgcloud_web_console", "clinician")
    assert client.get("/console/").status_code == 403


def test_a_draft_is_diffed_against_the_version_in_force(client: TestClient, fleet: Fleet) -> None:
    draft = '{"compression": "keep", "forwarding_enabled": false, "push_poll_seconds": 10}'
    page = post(client, "/console/gateways/gateway-h0001/rules/preview", {"document": draft})
    assert page.status_code == 200
    diff = page.text.split('id="diff"')[1].split("</pre>")[0]
    assert '<span class="del">-  &#34;forwarding_enabled&#34;: true,</span>' in diff
    assert '<span class="add">+  &#34;forwarding_enabled&#34;: false,</span>' in diff
    assert "version" not in diff  # central sets it: not the operator's change
    assert 'id="push"' in page.text
    assert fleet.pushed == []  # a preview stores nothing


def test_pushing_a_draft_issues_a_version(client: TestClient, fleet: Fleet) -> None:
    draft = '{"compression": "keep", "forwarding_enabled": false, "version": 99}'
    answer = post(client, "/console/gateways/gateway-h0001/rules", {"document": draft})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/gateways/gateway-h0001?pushed=3"
    # the operator's own "version" is dropped: central numbers the versions
    assert fleet.pushed == [
        ("platform.admin", "gateway-h0001", {"compression": "keep", "forwarding_enabled": False})
    ]


@pytest.mark.parametrize(
    ("draft", "problem"),
    [
        ('{"compression": "png"}', "document.compression: Input should be"),
        ('{"nonsense": 1}', "document.nonsense: Extra inputs are not permitted"),
        ("{not json", "not JSON: line 1"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_an_invalid_draft_is_shown_again_with_its_problems(
    client: TestClient, fleet: Fleet, draft: str, problem: str
) -> None:
    for path in ("rules/preview", "rules"):
        page = post(client, f"/console/gateways/gateway-h0001/{path}", {"document": draft})
        assert page.status_code == 422
        assert problem in page.text.split('id="problems"')[1]
        assert 'id="push"' not in page.text
    assert fleet.pushed == []


def test_a_change_from_another_site_is_refused(client: TestClient, fleet: Fleet) -> None:
    answer = client.post(
        "/console/gateways/gateway-h0001/rules",
        data={"document": "{}"},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403 and fleet.pushed == []


def test_an_unknown_or_unseen_gateway_is_404(client: TestClient) -> None:
    assert client.get("/console/gateways/gateway-h0099").status_code == 404


def test_acknowledging_an_alert(client: TestClient, fleet: Fleet) -> None:
    answer = post(client, "/console/alerts/5/ack", {})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/alerts")
    assert fleet.acked == [("platform.admin", 5)]


@pytest.mark.parametrize(
    ("form", "target"),
    [
        ({"target": "gateways", "gateway": ["gateway-h0001"]}, {"gateways": ["gateway-h0001"]}),
        ({"target": "group", "group": "canary"}, {"group": "canary"}),
        ({"target": "all"}, {"all": True}),
    ],
)
def test_starting_an_upgrade_then_watching_it(
    client: TestClient, fleet: Fleet, form: dict[str, Any], target: dict[str, Any]
) -> None:
    answer = post(client, "/console/upgrades", {"release": "2026.12.1", **form})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/upgrades/7")
    assert fleet.started == [("platform.admin", "2026.12.1", target)]
    watching = client.get("/console/upgrades/7").text
    assert 'http-equiv="refresh"' in watching and 'data-finished="no"' in watching
    fleet.upgrade_status = "healthy"
    done = client.get("/console/upgrades/7").text
    assert 'http-equiv="refresh"' not in done and 'data-status="healthy"' in done


def test_an_upgrade_without_its_gateways_is_shown_again(client: TestClient, fleet: Fleet) -> None:
    page = post(client, "/console/upgrades", {"release": "2026.12.1", "target": "gateways"})
    assert page.status_code == 422 and "exactly one of" in page.text
    assert fleet.started == []


def test_a_hospital_admin_lists_their_own_reconciliation(client: TestClient) -> None:
    asked: list[str | None] = []

    class Registry:
        def unmatched(self, code: str | None) -> list[Any]:
            asked.append(code)
            return []

    app = client.app
    assert isinstance(app, FastAPI)
    app.dependency_overrides[deps.registry] = lambda: Registry()
    assert client.get("/console/reconciliation").status_code == 200
    client.cookies.set("imgcloud_web_console", "hadmin")
    assert client.get("/console/reconciliation").status_code == 200
    assert asked == [None, "H0001"]


def test_values_are_escaped(client: TestClient, fleet: Fleet) -> None:
    fleet.gateways[0].heartbeat = {"failing_deliveries": 1, "failure_reasons": {"<b>x</b>": 1}}
    html = client.get("/console/").text
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_the_routes_have_clear_names_for_the_audit_trail() -> None:
    names = {getattr(r, "name", "") for r in console.router.routes}
    assert {
        "console_gateways",
        "console_gateway",
        "console_rules_preview",
        "console_rules_push",
        "console_alerts",
        "console_alert_ack",
        "console_reconciliation",
        "console_upgrades",
        "console_upgrade_start",
        "console_upgrade_watch",
    } <= names


def test_the_console_has_its_login(client: TestClient) -> None:
    answer = client.get("/console/login")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(GATEWAY + "/auth/realms/imaging-cloud/")


def test_the_diff_of_equal_documents_is_empty_and_ignores_the_version() -> None:
    assert console_views.rules_diff({**RULES, "version": 2}, {**RULES, "version": 3}) == []
    assert console_views.rules_diff(None, {"a": 1}) == [
        ("hunk", "@@ -1 +1,3 @@"),
        ("del", "-{}"),
        ("add", "+{"),
        ("add", '+  "a": 1'),
        ("add", "+}"),
    ]


def test_a_heartbeat_with_odd_fields_still_gives_a_row() -> None:
    odd = gateway("gateway-h0003")
    odd.heartbeat = {"queue_depth": "many", "failing_deliveries": True, "failure_reasons": [1]}
    row = console_views.row(odd)
    assert (row.queue_depth, row.failing_deliveries, row.failure_reasons) == (None, 0, {})
