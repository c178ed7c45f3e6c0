"""Forged, tampered and unsigned tokens get 401 on every kind of endpoint: the indexer API,
DICOMweb and central's REST API through the gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from deploy.stack.client import StackClient

ENDPOINTS = [
    ("GET", "/api/v1/institutions/H0001/exams/ANY"),
    ("POST", "/api/v1/persons/exams/search"),
    ("GET", "/dicom-web/studies"),
    ("GET", "/orthanc/system"),
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def genuine(stack: StackClient) -> str:
    return str(
        stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])["access_token"]
    )


@pytest.fixture(scope="module")
def forgeries(stack: StackClient, genuine: str) -> dict[str, str]:
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    own_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = httpx.get(
        f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}/protocol/openid-connect/certs",
        verify=stack.ca_context(),
        timeout=30,
    ).json()
    realm_key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    realm_public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(realm_key))
    public_pem = realm_public.public_bytes(  # type: ignore[union-attr]
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    head, _payload, signature = genuine.split(".")
    tampered_claims = dict(claims, institution="H0002", realm_access={"roles": ["platform-admin"]})
    tampered = b64(json.dumps(tampered_claims).encode())
    now = int(time.time())

    def own(extra: dict) -> str:
        return jwt.encode(
            dict(claims, **extra), own_key, algorithm="RS256", headers={"kid": header["kid"]}
        )

    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": header["kid"]}).encode())
    hs_sig = b64(hmac.new(public_pem, f"{hs_head}.{body}".encode(), hashlib.sha256).digest())
    return {
        "alg none": f"{unsigned}.{body}.",
        "HMAC with the realm's public key": f"{hs_head}.{body}.{hs_sig}",
        "signed with another key, realm's kid": own({}),
        "claims changed, signature kept": f"{head}.{tampered}.{signature}",
        "expired (own key)": own({"exp": now - 3600, "iat": now - 7200}),
        "wrong issuer (own key)": own({"iss": "https://evil.example/realms/imaging-cloud"}),
        "wrong audience (own key)": own({"aud": "someone-else"}),
        "garbage": "not-a-token",
    }


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_forgery_is_refused_everywhere(
    stack: StackClient, forgeries: dict[str, str], genuine: str, method: str, path: str
) -> None:
    body = {"national_id": "11010519491231002X", "purpose": "forgery test"}
    for name, token in forgeries.items():
        with stack.gateway(token) as client:
            answer = client.request(method, path, json=body if method == "POST" else None)
        assert answer.status_code == 401, f"{name}: {answer.status_code}"
    with stack.gateway(genuine) as client:  # the genuine token passes the same checks
        answer = client.request(method, path, json=body if method == "POST" else None)
    assert answer.status_code != 401
