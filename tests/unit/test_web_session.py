"""The web pages' login (indexer/web/session.py): what a page request needs to get through."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from indexer.api import deps
from indexer.api.errors import install as install_errors
from indexer.errors import Unauthenticated
from indexer.security.auth import Principal
from indexer.services import access
from indexer.web import session

GATEWAY = "https://gateway.example:8443"
ADMIN = Principal("s1", "platform.admin", "PLATFORM", frozenset({"platform-admin"}))
CLINICIAN = Principal("s2", "clinician.b", "H0002", frozenset({"clinician"}))
TOKENS = {"admin-token": ADMIN, "clinician-token": CLINICIAN}
LOGIN = session.WebLogin("/console", access.may_use_console)
Who = Annotated[Principal, Depends(LOGIN.caller)]


class Verifier:
    def verify(self, token: str) -> Principal:
        if token not in TOKENS:
            raise Unauthenticated("invalid token: DecodeError")
        return TOKENS[token]


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr(deps, "get_verifier", lambda: Verifier())
    app = FastAPI()
    install_errors(app)
    session.install(app)
    app.state.settings = SimpleNamespace(
        gateway_url=GATEWAY,
        oidc_issuer="https://gateway.example:8443/auth/realms/imaging-cloud",
        oidc_jwks_url="http://127.0.0.1:1/realms/imaging-cloud/protocol/openid-connect/certs",
        oidc_timeout_s=1.0,
    )
    app.include_router(LOGIN.router())

    @app.get("/console/")
    def page(who: Who) -> dict[str, str]:
        return {"user": who.username}

    @app.post("/console/act")
    def act(who: Who) -> dict[str, str]:
        return {"done": who.username}

    return TestClient(app, base_url=GATEWAY, follow_redirects=False)


def test_a_page_without_a_session_goes_to_the_login(client: TestClient) -> None:
    answer = client.get("/console/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"


def test_a_forged_or_expired_cookie_goes_to_the_login(client: TestClient) -> None:
    client.cookies.set("imgcloud_web_console", "not-a-token")
    answer = client.get("/console/")
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")


def test_a_valid_session_of_an_allowed_role_gets_the_page(client: TestClient) -> None:
    client.cookies.set("imgcloud_web_console", "admin-token")
    assert client.get("/console/").json() == {"user": "platform.admin"}


def test_a_role_the_area_does_not_admit_is_refused(client: TestClient) -> None:
    client.cookies.set("imgcloud_web_console", "clinician-token")
    answer = client.get("/console/")
    assert answer.status_code == 403
    assert "hospital and platform administrators" in answer.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "https://evil.example"}, {"Referer": "https://gateway.example/console/"}],
)
def test_a_change_from_elsewhere_is_refused(client: TestClient, headers: dict[str, str]) -> None:
    client.cookies.set("imgcloud_web_console", "admin-token")
    answer = client.post("/console/act", headers=headers)
    assert answer.status_code == 403
    assert "platform's own page" in answer.json()["detail"]


def test_a_change_from_the_page_itself_passes(client: TestClient) -> None:
    client.cookies.set("imgcloud_web_console", "admin-token")
    answer = client.post("/console/act", headers={"Origin": GATEWAY})
    assert answer.json() == {"done": "platform.admin"}


def test_the_login_sends_the_browser_to_keycloak_with_pkce(client: TestClient) -> None:
    answer = client.get("/console/login")
    assert answer.status_code == 303
    target = urlsplit(answer.headers["location"])
    query = parse_qs(target.query)
    assert target.path.endswith("/realms/imaging-cloud/protocol/openid-connect/auth")
    assert query["client_id"] == ["imgcloud-web"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [GATEWAY + "/console/login/callback"]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("imgcloud_web_console_login=" + query["state"][0] + ".")
    assert "HttpOnly" in cookie and "Secure" in cookie and "Path=/console/login" in cookie


def test_a_callback_whose_state_did_not_start_here_is_refused(client: TestClient) -> None:
    client.get("/console/login")  # sets the login cookie with its own state
    answer = client.get("/console/login/callback", params={"code": "c", "state": "forged"})
    assert answer.status_code == 401
    assert "start again" in answer.json()["detail"]


def test_logout_clears_the_session_and_ends_keycloaks(client: TestClient) -> None:
    client.cookies.set("imgcloud_web_console", "admin-token")
    assert client.post("/console/logout").status_code == 403  # not from the page
    answer = client.post("/console/logout", headers={"Origin": GATEWAY})
    assert answer.status_code == 303
    assert "/protocol/openid-connect/logout?" in answer.headers["location"]
    assert 'imgcloud_web_console=""' in answer.headers["set-cookie"]
