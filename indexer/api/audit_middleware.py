"""One audit record per /api/v1 request (and per study search), written after the answer
is known: who (from the token, or "anonymous"), role, institution, action, the resource in
pseudonymised form, purpose, source address and the HTTP status."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request

from ..errors import IndexerError
from ..security.auth import Principal
from ..services.audit import event
from .deps import get_pii

AUDITED = ("/api/v1/", "/dicom-web/", "/s/", "/orthanc-login")
SKIP = ("/api/v1/authz/",)  # the gateway's decisions are recorded by that route itself


def pseudonym(kind: str, value: str) -> str:
    key = get_pii().blind_index_key
    return (
        f"{kind}:"
        + hmac.new(key, f"audit:{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:24]
    )


def resource_of(request: Request) -> str | None:
    explicit = getattr(request.state, "audit_resource", None)
    if explicit:
        return str(explicit)
    params = request.path_params
    code = params.get("code")
    if "mrn" in params:  # a patient: never the MRN itself
        return f"patient:{code}/" + pseudonym("mrn", f"{code}/{params['mrn']}")
    if "exam_no" in params:
        return f"exam:{code}/{params['exam_no']}"
    if "master_index_id" in params:
        return f"master-index:{params['master_index_id']}"
    if "study_instance_uid" in params:
        return f"study:{params['study_instance_uid']}"
    if code:
        return f"institution:{code}"
    return None


def action_of(request: Request) -> str:
    route = request.scope.get("route")
    # no route matched: a fixed name, never the path (it may hold a share link's secret)
    name = getattr(route, "name", None) or "unmatched"
    return f"api.{name}"[:64]


def source_of(request: Request) -> str | None:
    return client_address(request)


def install(app: FastAPI) -> None:
    async def audited(scope, receive, send, inner):  # type: ignore[no-untyped-def]
        status = {"code": 500}

        async def watch(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await inner(scope, receive, watch)
        finally:
            request = Request(scope)
            who = getattr(request.state, "principal", None)
            await request.app.state.audit.record(
                event(
                    who,
                    action_of(request),
                    resource_of(request),
                    source_of(request),
                    status["code"],
                    getattr(request.state, "audit_purpose", None),
                )
            )

    class AuditMiddleware:
        """Pure ASGI (Starlette's BaseHTTPMiddleware costs too much per request)."""

        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.inner = inner

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            path = scope.get("path", "") if scope["type"] == "http" else ""
            if path.startswith(AUDITED) and not path.startswith(SKIP):
                await audited(scope, receive, send, self.inner)
            else:
                await self.inner(scope, receive, send)

    app.add_middleware(AuditMiddleware)


@dataclass
class Decision:
    """What an audited decision learns as it goes: the caller, the resource, the status."""

    resource: str | None
    who: Principal | None = None
    status: int = 500


@asynccontextmanager
async def audited(
    request: Request, action: str, resource: str | None, source: str | None
) -> AsyncIterator[Decision]:
    """One audit record for a decision made outside the /api/v1 middleware (the gateway's
    checks, the routes that stand in for central's REST calls); identical repeats within a
    minute are recorded once. A refusal raised inside is recorded with its status."""
    decision = Decision(resource)
    try:
        yield decision
    except IndexerError as exc:
        decision.status = exc.status
        raise
    finally:
        status = 200 if decision.status == 204 else decision.status
        await request.app.state.audit.record(
            event(decision.who, action, decision.resource, source, status), dedupe=True
        )


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
