"""The HTTPS gateway: viewer, DICOMweb, indexer API and Keycloak behind one origin."""

from __future__ import annotations

import ssl

import httpx
import jwt
import pytest

from deploy.stack.client import StackClient


def test_viewer_index_is_served_over_https_verified_by_the_local_ca(stack: StackClient) -> None:
    with stack.gateway() as gw:
        index = gw.get("/")
        config = gw.get("/app-config.js")
    assert index.status_code == 200
    assert "<html" in index.text.lower()
    assert config.status_code == 200
    assert "qidoRoot: gatewayOrigin + '/dicom-web'" in config.text


def test_gateway_certificate_is_not_trusted_without_the_local_ca(stack: StackClient) -> None:
    with pytest.raises(httpx.ConnectError) as info:
        httpx.get(stack["GATEWAY_URL"] + "/", verify=ssl.create_default_context(), timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


def test_gateway_speaks_only_tls(stack: StackClient) -> None:
    plain = stack["GATEWAY_URL"].replace("https://", "http://")
    response = httpx.get(plain + "/", timeout=10)
    assert response.status_code == 400  # nginx: "plain HTTP request was sent to HTTPS port"


def test_indexer_health_through_the_gateway(stack: StackClient) -> None:
    with stack.gateway() as gw:
        response = gw.get("/api/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["schema_revision"]


def test_dicomweb_qido_through_the_gateway(stack: StackClient) -> None:
    token = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
    with stack.gateway(token["access_token"]) as gw:
        response = gw.get("/dicom-web/studies", params={"limit": "5"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert isinstance(response.json(), list)


def test_demo_radiologist_gets_a_token_from_the_realm(stack: StackClient) -> None:
    tokens = stack.password_token(
        stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    )
    issuer = f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}"
    jwks = jwt.PyJWKClient(
        f"{issuer}/protocol/openid-connect/certs",
        ssl_context=ssl.create_default_context(cafile=stack["CA_CERT"]),
    )
    key = jwks.get_signing_key_from_jwt(tokens["access_token"])
    claims = jwt.decode(
        tokens["access_token"],
        key.key,
        algorithms=["RS256"],
        issuer=issuer,
        audience="imaging-cloud-api",
    )
    assert claims["institution"] == stack["EDGE_A_INSTITUTION"]
    assert "radiologist" in claims["realm_access"]["roles"]
    assert claims["exp"] - claims["iat"] <= 300
    assert tokens["refresh_token"]


def test_wrong_password_gets_no_token(stack: StackClient) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        stack.password_token(stack["DEMO_RADIOLOGIST_A_USER"], "not-the-password")
    assert info.value.response.status_code == 401
