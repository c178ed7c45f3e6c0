"""Through the gateway, Keycloak is only the imaging-cloud realm's login and OIDC endpoints
(and the theme assets and JS they load). The admin console, the admin REST API and the
master realm answer on loopback straight at Keycloak (or from the admin networks of the
settings, none by default); admin-cli takes no password grant in the realm; the management
port (health, metrics) listens on loopback only and the gateway never routes to it."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import httpx
import pytest

from deploy.stack.client import StackClient
from deploy.stack.services.keycloak import ADMIN_USER


def _raw_get(stack: StackClient, path: str, method: str = "GET") -> tuple[int, str]:
    """Send the path exactly as written (no client-side normalisation); status and body."""
    host, port = stack["GATEWAY_URL"].removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=stack.ca_context(), timeout=15)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", errors="replace")
    finally:
        conn.close()


def _keycloak_refused(answer: tuple[int, str]) -> bool:
    """Refused, or not Keycloak at all (a path nginx resolves outside /auth/ gets the
    viewer's index.html)."""
    status, body = answer
    return status in (400, 404) or (status == 200 and "keycloak" not in body.lower())


ADMIN_PATHS = [
    "/auth/admin/",
    "/auth/admin/master/console/",
    "/auth/admin/imaging-cloud/console/",
    "/auth/admin/realms/imaging-cloud/users",
    "/auth/admin/serverinfo",
    "/auth/realms/master",
    "/auth/realms/master/",
    "/auth/realms/master/.well-known/openid-configuration",
    "/auth/realms/master/protocol/openid-connect/auth?client_id=security-admin-console",
    "/auth/realms/master/account/",
    "/auth/health/ready",
    "/auth/metrics",
    "/auth/",
    # Evasions: dot segments, encodings, ';' parameters, capitals, doubled slashes.
    "/auth/realms/imaging-cloud/../master/.well-known/openid-configuration",
    "/auth/realms/imaging-cloud/%2e%2e/master/.well-known/openid-configuration",
    "/auth/realms/imaging-cloud/..;/master/.well-known/openid-configuration",
    "/auth/realms/imaging-cloud/..%2fmaster/.well-known/openid-configuration",
    "/auth/realms/imaging-cloud/%2E%2E/%2E%2E/admin/master/console/",
    "/auth/realms/imaging-cloud;x=1/../master/.well-known/openid-configuration",
    "/auth/resources/../admin/master/console/",
    "/auth/resources/..%2f..%2fadmin/master/console/",
    "/auth/Admin/master/console/",
    "/auth/REALMS/master/.well-known/openid-configuration",
    "//auth/admin/master/console/",
    "/auth//admin/master/console/",
]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_gateway_does_not_expose_admin_or_master_realm(stack: StackClient, path: str) -> None:
    assert _keycloak_refused(_raw_get(stack, path))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_gateway_admin_api_refused_for_every_method(stack: StackClient, method: str) -> None:
    status, _body = _raw_get(stack, "/auth/admin/realms/imaging-cloud/users", method)
    assert status in (400, 404)


def test_master_realm_password_grant_refused_through_the_gateway(stack: StackClient) -> None:
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    response = httpx.post(
        f"{stack['KEYCLOAK_URL']}/realms/master/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": ADMIN_USER,
            "password": secrets["keycloak_admin"],
        },
        verify=stack.ca_context(),
        timeout=30,
    )
    assert response.status_code == 404
    assert "access_token" not in response.text


def test_realm_login_and_oidc_endpoints_still_work_through_the_gateway(
    stack: StackClient,
) -> None:
    base = f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}"
    with httpx.Client(verify=stack.ca_context(), timeout=30) as http:
        config = http.get(f"{base}/.well-known/openid-configuration")
        assert config.status_code == 200
        assert http.get(config.json()["jwks_uri"]).status_code == 200
        login = http.get(
            config.json()["authorization_endpoint"],
            params={
                "client_id": "ohif-viewer",
                "response_type": "code",
                "redirect_uri": stack["GATEWAY_URL"] + "/callback",
                "scope": "openid",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256",
            },
        )
        assert login.status_code == 200
        assert 'id="kc-form-login"' in login.text or "kc-login" in login.text
        assets = re.findall(r'(?:href|src)="(/auth/resources/[^"]+)"', login.text)
        assert assets, "the login page loads no theme assets"
        for asset in assets[:5]:
            assert http.get(stack["GATEWAY_URL"] + asset).status_code == 200, asset
    assert stack.password_token(
        stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    )


@pytest.mark.parametrize("where", ["gateway", "loopback"])
def test_admin_cli_takes_no_password_grant_in_the_realm(stack: StackClient, where: str) -> None:
    root = stack["KEYCLOAK_URL"] if where == "gateway" else stack["KEYCLOAK_INTERNAL_URL"]
    response = httpx.post(
        f"{root}/realms/{stack['KEYCLOAK_REALM']}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": stack["DEMO_ADMIN_USER"],
            "password": stack["DEMO_ADMIN_PASSWORD"],
        },
        verify=stack.ca_context(),
        timeout=30,
    )
    assert response.status_code in (400, 401)
    assert "access_token" not in response.text


def test_admin_console_answers_on_loopback(stack: StackClient) -> None:
    base = stack["KEYCLOAK_INTERNAL_URL"]
    console = httpx.get(f"{base}/admin/master/console/", timeout=30)
    assert console.status_code == 200
    # The console logs in and calls the admin API on loopback, not through the gateway.
    for key in ("adminBaseUrl", "authUrl"):
        assert f'"{key}": "{base}"' in console.text, key
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    token = httpx.post(
        f"{base}/realms/master/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": ADMIN_USER,
            "password": secrets["keycloak_admin"],
        },
        timeout=30,
    )
    assert token.status_code == 200


def _listen_addresses(port: int) -> set[str]:
    """The local addresses of sockets listening on a TCP port (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = {
    "0100007F",  # 127.0.0.1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
    "00000000000000000000000001000000",  # ::1
}


def test_management_port_listens_on_loopback_only(stack: StackClient) -> None:
    ports = json.loads((Path(stack["STACK_DIR"]) / "ports.json").read_text())
    addresses = _listen_addresses(ports["keycloak_mgmt"])
    assert addresses and addresses <= LOOPBACK
    health = httpx.get(f"http://127.0.0.1:{ports['keycloak_mgmt']}/auth/health/ready", timeout=10)
    assert health.status_code == 200


def test_metrics_only_on_the_loopback_management_port(stack: StackClient) -> None:
    """Keycloak is built with metrics for Prometheus (#15): the management port (loopback
    only, above) serves them; the gateway does not (/auth/metrics is refused above), nor
    does Keycloak's own HTTP port."""
    ports = json.loads((Path(stack["STACK_DIR"]) / "ports.json").read_text())
    metrics = httpx.get(f"http://127.0.0.1:{ports['keycloak_mgmt']}/auth/metrics", timeout=10)
    assert metrics.status_code == 200 and "jvm_" in metrics.text
    main = httpx.get(f"http://127.0.0.1:{ports['keycloak']}/auth/metrics", timeout=10)
    assert main.status_code == 404
