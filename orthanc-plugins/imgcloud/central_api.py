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


class CentralApi:
    def __init__(
        self,
        url: str,
        auth: httpx.Auth | tuple[str, str] | None,
        *,
        timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            auth=auth,
            timeout=httpx.Timeout(timeout_s, connect=5),
            # Orthanc 1.10 closes idle keep-alive connections after about a second.
            limits=httpx.Limits(max_connections=16, keepalive_expiry=0.5),
            transport=transport,
            verify=verify,
        )

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CentralError(f"central did not answer ({what}): {type(exc).__name__}") from exc
        if response.status_code >= 400:
            detail = response.text[:200].strip()
            raise CentralError(
                f"central refused ({what}): HTTP {response.status_code} {detail}",
                response.status_code,
            )
        return response

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self._call(method, path, what, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise CentralError(f"central answered ({what}) with something not JSON") from exc

    # -- forwarding ---------------------------------------------------------------------
    def store(self, dicom: bytes) -> None:
        self._call(
            "POST",
            "/instances",
            "store an instance",
            content=dicom,
            headers={"Content-Type": "application/dicom"},
        )

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

    # -- reading studies back -----------------------------------------------------------
    def find_study(self, study_instance_uid: str) -> str | None:
        found = self._json("POST", "/tools/lookup", "look up a study", content=study_instance_uid)
        return next((r["ID"] for r in found if r.get("Type") == "Study"), None)

    def list_instances(self, study_id: str) -> list[tuple[str, str]]:
        found = self._json("GET", f"/studies/{study_id}/instances", "list a study's instances")
        return [(i["ID"], i["MainDicomTags"]["SOPInstanceUID"]) for i in found]

    def read_instance(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file", "read an instance").content

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
