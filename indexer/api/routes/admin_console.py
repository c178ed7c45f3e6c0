"""Orthanc Explorer for platform administrators, in a browser. Explorer cannot send a
bearer token, so the gateway accepts one from a cookie on /orthanc/ only: this login
(OIDC authorization code with PKCE, client `orthanc-explorer`) puts the administrator's
access token there. The cookie is HttpOnly, Secure and SameSite=Strict, so no other site
can make the browser use it; it lasts as long as the token (minutes): coming back to
/orthanc-login renews it without a password while the Keycloak session lasts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import RedirectResponse, Response

from ...services import access
from ...web.session import authorization_redirect, exchange_code
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
    response, started = authorization_redirect(request, CLIENT_ID, _callback(request))
    response.set_cookie(
        LOGIN_COOKIE,
        started,
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
    body = exchange_code(request, CLIENT_ID, _callback(request), code, state, login)
    token = str(body["access_token"])
    who = get_verifier().verify(token)
    request.state.principal = who
    access.require(access.may_use_explorer(who))
    response = RedirectResponse(EXPLORER, status_code=303)
    response.set_cookie(
        ADMIN_COOKIE,
        token,
        max_age=int(body.get("expires_in", 300)),
        path="/orthanc/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/orthanc-login")
    return response
