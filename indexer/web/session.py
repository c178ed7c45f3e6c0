"""Login for the platform's web pages (the operator console under /console, the clinician
workspace under /workspace): OIDC authorization code with PKCE against Keycloak, client
`imgcloud-web`, the resulting access token kept in an HttpOnly cookie of the page's path.

What is trusted, and why:
- The cookie holds the Keycloak access token itself; every request verifies it exactly as a
  bearer token is verified (signature, issuer, audience, expiry), so a forged or expired
  cookie is worth nothing. The page's own access decision (services.access) then applies.
- The cookie is HttpOnly (no script reads it), Secure, SameSite=Strict and scoped to the
  page's path: another site cannot make the browser send it, and /api/ never receives it
  (the API takes only Authorization headers).
- Requests that change something (any method but GET/HEAD) must also come from the page
  itself: an Origin (or, without one, a Referer) of the gateway's own URL. SameSite=Strict
  already keeps cross-site posts cookieless; this is the second lock.
- The login's state and PKCE verifier travel in a short-lived cookie of the login path
  only, compared in constant time when Keycloak sends the browser back.
A token lasts minutes (the realm's setting): when it has expired, a GET goes back through
the login, which Keycloak answers without a password while its session lasts.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response

from ..errors import Forbidden, IndexerError, Unauthenticated
from ..security.auth import Principal
from ..services.access import Decision, require

CLIENT_ID = "imgcloud-web"
SAFE_METHODS = frozenset({"GET", "HEAD"})


class LoginRequired(IndexerError):
    """No valid session cookie on a page request: the answer is a redirect to the login."""

    status = 401

    def __init__(self, login_url: str) -> None:
        super().__init__("log in first")
        self.login_url = login_url


@dataclass(frozen=True)
class WebLogin:
    """The login of one page area. `prefix` is its path ("/console"); `allowed` is the
    area's access decision, checked at login and on every request."""

    prefix: str
    allowed: Callable[[Principal], Decision]

    @property
    def cookie(self) -> str:
        return "imgcloud_web_" + self.prefix.strip("/")

    @property
    def login_cookie(self) -> str:
        return self.cookie + "_login"

    def callback_url(self, request: Request) -> str:
        return str(request.app.state.settings.gateway_url) + self.prefix + "/login/callback"

    def router(self) -> APIRouter:
        """GET {prefix}/login, GET {prefix}/login/callback, POST {prefix}/logout."""
        router = APIRouter(include_in_schema=False)
        area = self.prefix.strip("/")
        router.add_api_route(
            self.prefix + "/login", self._start, methods=["GET"], name=f"{area}_login"
        )
        router.add_api_route(
            self.prefix + "/login/callback",
            self._finish,
            methods=["GET"],
            name=f"{area}_login_callback",
        )
        router.add_api_route(
            self.prefix + "/logout", self._logout, methods=["POST"], name=f"{area}_logout"
        )
        return router

    def caller(self, request: Request) -> Principal:
        """The page's caller: a FastAPI dependency (`Depends(login.caller)`). Verifies the
        cookie's token, the area's access decision, and for unsafe methods the origin."""
        from ..api.deps import get_verifier  # the API's verifier (one per process)

        token = request.cookies.get(self.cookie)
        if not token:
            raise LoginRequired(self.prefix + "/login")
        try:
            who = get_verifier().verify(token)
        except Unauthenticated:
            raise LoginRequired(self.prefix + "/login") from None
        request.state.principal = who
        if request.method not in SAFE_METHODS:
            _require_same_origin(request)
        require(self.allowed(who))
        return who

    def _start(self, request: Request) -> Response:
        response, login = authorization_redirect(request, CLIENT_ID, self.callback_url(request))
        response.set_cookie(
            self.login_cookie,
            login,
            max_age=600,
            path=self.prefix + "/login",
            secure=True,
            httponly=True,
            samesite="lax",  # it must come back with Keycloak's redirect
        )
        return response

    def _finish(
        self,
        request: Request,
        code: Annotated[str, Query(max_length=4096)] = "",
        state: Annotated[str, Query(max_length=200)] = "",
    ) -> Response:
        from ..api.deps import get_verifier

        body = exchange_code(
            request,
            CLIENT_ID,
            self.callback_url(request),
            code,
            state,
            request.cookies.get(self.login_cookie),
        )
        token = str(body["access_token"])
        who = get_verifier().verify(token)
        request.state.principal = who
        require(self.allowed(who))
        response = RedirectResponse(self.prefix + "/", status_code=303)
        response.set_cookie(
            self.cookie,
            token,
            max_age=int(body.get("expires_in", 300)),
            path=self.prefix,
            secure=True,
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(self.login_cookie, path=self.prefix + "/login")
        return response

    def _logout(self, request: Request) -> Response:
        _require_same_origin(request)
        response = RedirectResponse(
            f"{request.app.state.settings.oidc_issuer}/protocol/openid-connect/logout?"
            + urlencode(
                {
                    "client_id": CLIENT_ID,
                    "post_logout_redirect_uri": str(request.app.state.settings.gateway_url)
                    + self.prefix
                    + "/",
                }
            ),
            status_code=303,
        )
        response.delete_cookie(self.cookie, path=self.prefix)
        return response


def authorization_redirect(
    request: Request, client_id: str, redirect_uri: str
) -> tuple[RedirectResponse, str]:
    """The redirect to Keycloak's login (authorization code with PKCE S256), and the value
    the login cookie must keep until Keycloak sends the browser back: "state.verifier"."""
    settings = request.app.state.settings
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = urlencode(
        {
            "client_id": client_id,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(
        f"{settings.oidc_issuer}/protocol/openid-connect/auth?{query}", status_code=303
    )
    return response, f"{state}.{verifier}"


def exchange_code(
    request: Request,
    client_id: str,
    redirect_uri: str,
    code: str,
    state: str,
    login: str | None,
) -> dict[str, Any]:
    """Keycloak's token answer for the code it sent back, once `state` is the one the
    login cookie kept (compared in constant time); Unauthenticated otherwise."""
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
                "client_id": client_id,
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            timeout=settings.oidc_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise Unauthenticated(f"Keycloak did not answer ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise Unauthenticated("Keycloak refused the login code")
    return dict(answer.json())


def _require_same_origin(request: Request) -> None:
    """A state-changing page request must come from the gateway's own pages."""
    own = urlsplit(str(request.app.state.settings.gateway_url))
    sent = request.headers.get("origin") or request.headers.get("referer") or ""
    seen = urlsplit(sent)
    if (seen.scheme, seen.netloc) != (own.scheme, own.netloc):
        raise Forbidden("this action must be sent from the platform's own page")


def install(app: FastAPI) -> None:
    """Page requests without a valid session go to the login instead of an error."""

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(exc.login_url, status_code=303)
