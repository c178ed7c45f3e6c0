"""Orthanc Explorer for platform administrators, in a browser. Explorer cannot send a
bearer token, so the gateway accepts one from a cookie on /orthanc/ only: this login
(OIDC authorization code with PKCE, client `orthanc-explorer`) puts the administrator's
access token there. The cookie is HttpOnly, Secure and SameSite=Strict, so no other site
can make the browser use it; it lasts as long as the token (minutes): coming back to
/orthanc-login renews it without a password while the Keycloak session lasts."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Annotated
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import RedirectResponse, Response

from ...errors import Unauthenticated
from ...services import access
from ..deps import get_verifier

router = APIRouter(include_in_schema=False)
CLIENT_ID = "orthanc-explorer"
ADMIN_COOKIE = "imgcloud_admin"  # read by the gateway's check of /orthanc/ requests
LOGIN_COOKIE = "imgcloud_admin_login"  # state and PKCE verifier while Keycloak asks
EXPLORER = "/orthanc/app/explorer.html"


def _callback(request: Request) -> str:
    return request.app.state.settings.gateway_url + "/orthanc-login/callback"


@router.get("/orthanc-login")
def start(request: Request) -> Response:
    settings = request.app.state.settings
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = urlencode(
        {
            "client_id": CLIENT_ID,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": _callback(request),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(
        f"{settings.oidc_issuer}/protocol/openid-connect/auth?{query}", status_code=303
    )
    response.set_cookie(
        LOGIN_COOKIE,
        f"{state}.{verifier}",
        max_age=600,
        path="/orthanc-login",
        secure=True,
        httponly=True,
        samesite="lax",  # it must come back with Keycloak's redirect
    )
    return response


@router.get("/orthanc-login/callback")
def finish(
    request: Request,
    code: Annotated[str, Query(max_length=4096)] = "",
    state: Annotated[str, Query(max_length=200)] = "",
    login: Annotated[str | None, Cookie(alias=LOGIN_COOKIE)] = None,
) -> Response:
    expected, _, verifier = (login or "").partition(".")
    if not code or not expected or not secrets.compare_digest(state, expected):
        raise Unauthenticated("the login did not start here or took too long: start again")
    settings = request.app.state.settings
    token_url = settings.oidc_jwks_url.removesuffix("/certs") + "/token"
    try:
        answer = httpx.post(
            token_url,
            data={
                "grant_type": "authorization_code",
                "client_id": CLIENT_ID,
                "code": code,
                "redirect_uri": _callback(request),
                "code_verifier": verifier,
            },
            timeout=settings.oidc_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise Unauthenticated(f"Keycloak did not answer ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise Unauthenticated("Keycloak refused the login code")
    token = str(answer.json()["access_token"])
    who = get_verifier().verify(token)
    request.state.principal = who
    access.require(access.may_use_explorer(who))
    response = RedirectResponse(EXPLORER, status_code=303)
    response.set_cookie(
        ADMIN_COOKIE,
        token,
        max_age=int(answer.json().get("expires_in", 300)),
        path="/orthanc/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/orthanc-login")
    return response
