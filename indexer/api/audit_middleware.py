"""One audit record per /api/v1 request (and per study search), written after the answer
is known: who (from the token, or "anonymous"), role, institution, action, method, the
resource in pseudonymised form (DICOMweb at its real level: study, series, instance,
frames), the query's filters (personal values pseudonymised, secrets left out), purpose,
source address and the HTTP status.

The source address is the client's as the gateway saw it: X-Real-IP (X-Original-Remote,
X-Forwarded-For) is believed only on a request that carries the gateway's secret header
(X-Gateway-Secret, set by nginx on every request it passes here, per-stack secret); from
anyone else (a local process, whatever address it binds) the headers are ignored and the
TCP peer recorded. uvicorn's own --proxy-headers is off: request.client is that peer."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import FastAPI, Request

from ..errors import IndexerError
from ..security.auth import Principal
from ..services.audit import event
from .deps import get_pii

AUDITED = ("/api/v1/", "/dicom-web/", "/s/", "/orthanc-login", "/console", "/workspace")
SKIP = ("/api/v1/authz/",)  # the gateway's decisions are recorded by that route itself


def pseudonym(kind: str, value: str) -> str:
    key = get_pii().blind_index_key
    return (
        f"{kind}:"
        + hmac.new(key, f"audit:{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:24]
    )


# Query keys whose values are personal (DICOM keyword or tag, any case; the API's own
# names): recorded as keyed pseudonyms, one per keyword, whichever way it was asked.
PERSONAL = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "PatientBirthDate": "00100030",
    "PatientBirthTime": "00100032",
    "OtherPatientIDs": "00101000",
    "OtherPatientNames": "00101001",
    "PatientBirthName": "00101005",
    "PatientMotherBirthName": "00101060",
    "PatientAddress": "00101040",
    "PatientTelephoneNumbers": "00102154",
    "ReferringPhysicianName": "00080090",
    "AccessionNumber": "00080050",
    "mrn": "",
    "national_id": "",
    "name": "",
    "phone": "",
    "birth_date": "",
}
_PERSONAL_KEYS = {k.lower(): k for k in PERSONAL} | {t: k for k, t in PERSONAL.items() if t}
_SECRET_KEYS = frozenset({"code", "state", "session_state", "token", "access_token", "secret"})
_MAX_KEYS, _MAX_VALUE = 24, 64
# Recorded filters always fit the column as valid JSON: characters that JSON would escape
# to \uXXXX (controls, lone surrogates) become "?", and keys past what fits are left out
# and counted under TRUNCATED. (An over-long value cut by the writer would be invalid JSON.)
FILTERS_WIDTH = 4000  # audit_events.filters (migration 0007)
TRUNCATED = "(truncated)"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _printable(text: str) -> str:
    return _UNPRINTABLE.sub("?", text[:_MAX_VALUE])


def filters_of(query: str) -> str | None:
    """A URL query's filters (see filters_of_pairs)."""
    return filters_of_pairs(parse_qsl(query, keep_blank_values=True))


def filters_of_pairs(pairs: list[tuple[str, str]]) -> str | None:
    """Keys and values as JSON (a key asked twice: a list), personal values as pseudonyms,
    secrets (an OAuth code, say) as "(secret)"; None without any. At most _MAX_KEYS pairs
    of _MAX_VALUE characters each, and never more than FILTERS_WIDTH characters: what is
    left out is counted under "(truncated)"."""
    if not pairs:
        return None
    left_out = max(0, len(pairs) - _MAX_KEYS)
    out: dict[str, str | list[str]] = {}  # the count under TRUNCATED is added at the end
    for key, value in pairs[:_MAX_KEYS]:
        key = _printable(key)
        keyword = _PERSONAL_KEYS.get(key.lower().strip("()").replace(",", ""))
        if key == TRUNCATED:
            key = "?truncated?"  # the marker is the recorder's alone
        if keyword:
            value = pseudonym(keyword, value)
        elif key.lower() in _SECRET_KEYS:
            value = "(secret)"
        else:
            value = _printable(value)
        had = out.get(key)
        if had is None:
            candidate = {**out, key: value}
        else:
            candidate = {**out, key: [*([had] if isinstance(had, str) else had), value]}
        if len(_dump({**candidate, TRUNCATED: _MAX_KEYS})) > FILTERS_WIDTH:
            left_out += 1
            continue
        out = candidate
    return _dump({**out, TRUNCATED: left_out} if left_out else out)


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_LEVEL = {"studies": "study", "series": "series", "instances": "instance", "frames": "frames"}
_VIEWS = frozenset({"metadata", "rendered", "thumbnail", "bulkdata", "pixeldata"})
_UNUSUAL = re.compile(r"(?i)%2e|%2f|%5c|\\|/\.|//|[^\x21-\x7e]")


def dicomweb_resource(uri: str) -> str:
    """What a DICOMweb request asks for, at its level: study:S, study:S/series:SE,
    .../instance:I, .../frames:1,2, with a view (/metadata, /rendered) or a search
    (search:studies, study:S/search:series). Any other path as `path:` and itself."""
    path = urlsplit(uri).path
    segments = path.removeprefix("/dicom-web/").rstrip("/").split("/")
    parts: list[str] = []
    i = 0
    while not _UNUSUAL.search(path) and path.startswith("/dicom-web/") and i < len(segments):
        name = segments[i]
        if name in _LEVEL and i + 1 < len(segments) and segments[i + 1]:
            parts.append(f"{_LEVEL[name]}:{segments[i + 1]}")
            i += 2
        elif name in _LEVEL and i + 1 == len(segments):
            parts.append(f"search:{name}")
            i += 1
        elif name in _VIEWS and parts:
            parts.append(name)
            break
        else:
            parts = []
            break
    if parts:
        return "/".join(parts)
    return "path:" + "".join(c if 32 < ord(c) < 127 else "?" for c in path)


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
                    method=request.method,
                    filters=filters_of_pairs(
                        parse_qsl(
                            scope.get("query_string", b"").decode("latin-1"),
                            keep_blank_values=True,
                        )
                        # what a route adds of its own (a decision's outcome, say): under the
                        # same rules as a query's (personal values pseudonymised, bounded)
                        + list((getattr(request.state, "audit_filters", None) or {}).items())
                    ),
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
    request: Request,
    action: str,
    resource: str | None,
    source: str | None,
    method: str | None = None,
    filters: str | None = None,
) -> AsyncIterator[Decision]:
    """One audit record for a decision made outside the /api/v1 middleware (the gateway's
    checks, the routes that stand in for central's REST calls): one per decision (the
    writer counts identical granted ones of one batch in one row). A refusal raised inside
    is recorded with its status."""
    decision = Decision(resource)
    try:
        yield decision
    except IndexerError as exc:
        decision.status = exc.status
        raise
    finally:
        status = 200 if decision.status == 204 else decision.status
        await request.app.state.audit.record(
            event(
                decision.who,
                action,
                decision.resource,
                source,
                status,
                method=method or request.method,
                filters=filters,
            )
        )


GATEWAY_SECRET_HEADER = "x-gateway-secret"  # noqa: S105 - a header name
_FORWARDED = ("x-real-ip", "x-original-remote", "x-forwarded-for")


def from_gateway(request: Request) -> bool:
    """Whether the request carries the gateway's secret (constant-time comparison)."""
    settings = getattr(request.app.state, "settings", None)
    secret = settings.gateway_forward_secret.get_secret_value() if settings else ""
    sent = request.headers.get(GATEWAY_SECRET_HEADER, "")
    return bool(secret) and hmac.compare_digest(sent.encode(), secret.encode())


def client_address(request: Request) -> str | None:
    """The client's address as the gateway saw it, or the TCP peer's (see the module)."""
    peer = request.client.host if request.client else None
    if not from_gateway(request):
        return peer
    for name in _FORWARDED:
        value = request.headers.get(name, "").rsplit(",", 1)[-1].strip()
        try:
            return str(ip_address(value))
        except ValueError:
            continue
    return peer
