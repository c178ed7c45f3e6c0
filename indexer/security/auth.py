"""Who is calling: a Keycloak access token, checked on every request.

The signature is checked against the realm's published keys (cached; fetched again when a
token names a key id we do not know), and so are issuer, audience, expiry and not-before.
Only asymmetric algorithms are accepted: `alg: none` and HMAC tricks with the public key
fail before any key is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import TLRUCache

from ..errors import Unauthenticated

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
STAFF_ROLES = frozenset({"radiologist", "clinician", "hospital-admin"})
WRITER_ROLES = frozenset({"gateway", "hospital-admin"})
PLATFORM_ADMIN = "platform-admin"


@dataclass(frozen=True)
class Principal:
    subject: str
    username: str
    institution: str | None
    roles: frozenset[str]
    # the OAuth client the token was issued to (`azp`): a hospital gateway's service
    # account is `gateway-<institution>`, which names the gateway in the fleet registry
    client_id: str = ""

    def has(self, *roles: str) -> bool:
        return bool(self.roles & set(roles))


VERIFIED_TOKENS = 10_000  # tokens verified, remembered until they expire (per process)


class TokenVerifier:
    def __init__(self, issuer: str, jwks_url: str, audience: str, timeout_s: float) -> None:
        self.issuer = issuer
        self.audience = audience
        # per process, and needs no more: a verification's result is the token's own (the
        # signature cannot change); an entry goes at its token's expiry, the oldest first
        self._verified: TLRUCache[str, tuple[Principal, float]] = TLRUCache(
            maxsize=VERIFIED_TOKENS, ttu=lambda _token, entry, _now: entry[1], timer=time.time
        )
        self._keys = jwt.PyJWKClient(
            jwks_url, cache_keys=True, lifespan=600, timeout=int(max(1, timeout_s))
        )

    def verify(self, token: str) -> Principal:
        """The caller of a token; a token already verified is answered from a cache until
        it expires (the signature cannot change; expiry is checked every time)."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = self._verify(token)
        self._verified[token] = (principal, expires)
        return principal

    def forget(self) -> None:
        """Drop the verified-token cache (benchmarks time a first validation with it)."""
        self._verified.clear()

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in ALLOWED_ALGORITHMS:
                raise Unauthenticated("token algorithm not accepted")
            key = self._keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=10,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except Unauthenticated:
            raise
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise Unauthenticated(f"invalid token: {type(exc).__name__}") from None
        roles = frozenset((claims.get("realm_access") or {}).get("roles") or [])
        principal = Principal(
            subject=str(claims["sub"]),
            username=str(claims.get("preferred_username") or claims["sub"]),
            institution=claims.get("institution"),
            roles=roles,
            client_id=str(claims.get("azp") or ""),
        )
        return principal, float(claims["exp"])
