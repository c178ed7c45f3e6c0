"""The edge's calls to central: upload, verification, study reads, cross-hospital pushes.

Central is reached as the edge's configured Orthanc peer: through the HTTPS gateway with
the hospital gateway's Keycloak token, or directly with the peer's credentials. Every
call has an explicit timeout; failures raise CentralError with the HTTP status when central
answered, so callers can tell "refused" from "unreachable".
"""

from __future__ import annotations

from typing import Any

import httpx

from .delivery import Verification
from .errors import CentralError
from .http_call import Service
from .orthanc_rest import OrthancRest


class CentralApi(OrthancRest):
    def __init__(
        self,
        url: str,
        auth: httpx.Auth | tuple[str, str] | None,
        *,
        timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
        keepalive_s: float = 0.5,
    ) -> None:
        timeout = httpx.Timeout(timeout_s, connect=5)
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            auth=auth,
            timeout=timeout,
            # An idle connection is kept `keepalive_s` (ImagingCloud.CentralKeepAliveSeconds):
            # long enough to span the pause between two rounds of a study streaming in, so
            # the next round does not pay a TLS handshake per upload; below what the far
            # end keeps (the gateway 65 s; Orthanc its KeepAliveTimeout, 1 s by default).
            limits=httpx.Limits(max_connections=16, keepalive_expiry=keepalive_s),
            transport=transport,
            verify=verify,
        )
        self.service = Service(self.client, "central", CentralError, timeout)

    # -- forwarding ---------------------------------------------------------------------
    def verify(self, hashes: dict[str, str]) -> Verification:
        answer = self._json(
            "POST", "/imaging-cloud/verify", "verify hashes", json={"instances": hashes}
        )
        try:
            return Verification(
                set(answer["confirmed"]), set(answer["missing"]), set(answer["mismatched"])
            )
        except (KeyError, TypeError) as exc:
            raise CentralError("central's verification answer is malformed") from exc

    # -- reading studies back: find_study, list_instances, read_instance (OrthancRest)
    # -- cross-hospital pushes ----------------------------------------------------------
    def create_push(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/imaging-cloud/pushes", "record a push", json=request)

    def get_push(self, push_id: str) -> dict[str, Any]:
        return self._json("GET", f"/imaging-cloud/pushes/{push_id}", "read a push")

    def pending_pushes(self, institution: str) -> list[dict[str, Any]]:
        answer = self._json(
            "GET",
            "/imaging-cloud/pushes",
            "poll pushes",
            params={"to": institution, "state": "pending"},
        )
        return list(answer["pushes"])

    def set_push_state(self, push_id: str, change: dict[str, Any]) -> dict[str, Any]:
        return self._json(
            "POST", f"/imaging-cloud/pushes/{push_id}/state", "report a push", json=change
        )

    def close(self) -> None:
        self.client.close()
