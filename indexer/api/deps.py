"""FastAPI dependencies: settings, database session, personal-data keys, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from ..config import Settings, get_settings
from ..db import get_session
from ..errors import Unauthenticated
from ..security.auth import Principal, TokenVerifier
from ..security.pii import PiiCipher
from ..services.registry import Registry


@lru_cache(maxsize=1)
def get_pii() -> PiiCipher:
    return PiiCipher.from_file(get_settings().pii_key_file)


@lru_cache(maxsize=1)
def get_verifier() -> TokenVerifier:
    s = get_settings()
    return TokenVerifier(s.oidc_issuer, s.oidc_jwks_url, s.oidc_audience, s.oidc_timeout_s)


def authenticate(request: Request, authorization: str | None) -> Principal:
    """A valid Keycloak access token, or 401; the caller is kept for the audit record."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthenticated("an Authorization: Bearer <access token> header is required")
    principal = get_verifier().verify(authorization.removeprefix("Bearer ").strip())
    request.state.principal = principal
    return principal


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Every /api/v1 route depends on this (or on its async twin)."""
    return authenticate(request, authorization)


def registry(
    session: Annotated[Session, Depends(get_session)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Iterator[Registry]:
    yield Registry(session, get_pii(), settings.gateway_url)


Caller = Annotated[Principal, Depends(caller)]
Reg = Annotated[Registry, Depends(registry)]
