"""Authorisation for the gateway: nginx asks here (auth_request) before it lets a DICOMweb
request through to the central archive.

- A valid Keycloak token is required (401 otherwise).
- Platform administrators may read everything (their reads are audited like anyone's).
- Staff (radiologist, clinician, hospital admin) read their own institution's studies:
  WADO-RS, metadata, frames and QIDO restricted to one StudyInstanceUID are checked
  against the study's institution as the indexer knows it from the edges' arrivals.
- A search without a StudyInstanceUID, or any study the caller may not read (known or
  not), gets the same 403: neither counts nor error texts tell whether a study exists.
- Writes (STOW-RS) are for platform administrators.
- Another institution's study needs a grant to the caller's institution: a push from its
  owner, a 互认 lookup with a stated purpose (time-limited), or the patient's consent; or
  to the caller alone: break-glass, with a reason and an alert.
- Without a token, a patient's share link (its cookie) reads its one study, nothing else.

The rules are services/access.py's; this module loads the facts and asks it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs, parse_qsl, urlsplit

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from ...errors import Forbidden
from ...security.auth import Principal
from ...services import access, lookup_sql, ownership, sharing
from ..audit_middleware import audited, client_address, dicomweb_resource, filters_of
from ..deps import authenticate
from . import admin_console

router = APIRouter(prefix="/v1/authz", include_in_schema=False)
_STUDY_PATH = re.compile(
    r"/dicom-web/studies/((?=[0-9.]{1,64}(?:/|\Z))[0-9]+(?:\.[0-9]+)+)(?:/|\Z)"  # \Z: not $
)
READ_METHODS = ("GET", "HEAD")


# Anything a proxy or Orthanc might normalise differently from this check: dot segments,
# encoded dots, slashes and backslashes, doubled slashes. No DICOMweb or Orthanc path needs
# them (UID components are never empty), so they are refused outright.
_EVASIVE = re.compile(r"(?i)%2e|%2f|%5c|\\|/\.|//|#")
# Query keys that would name another study than the path's (keyword or tag, any case).
_STUDY_KEYS = frozenset({"studyinstanceuid", "0020000d"})


def study_of(uri: str) -> str | None:
    """The StudyInstanceUID a DICOMweb request is confined to, from its path; None when it
    is not confined to one study (a search across studies, an evasive path, or a query
    naming a study again). Orthanc restricts every /dicom-web/studies/{uid}/... request to
    that study; study searches for staff go to the indexer's own QIDO route."""
    if "#" in uri or "_method" in uri.lower():  # a fragment Orthanc's server would not cut
        return None  # off; a method override Orthanc would honour
    parts = urlsplit(uri)
    if _EVASIVE.search(parts.path):
        return None
    match = _STUDY_PATH.match(parts.path)
    if match is None:
        return None
    keys = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if keys & _STUDY_KEYS:
        return None
    return match[1]


async def share_link_reader(request: Request) -> tuple[Principal, str] | None:
    """A patient's share link (云胶片), from the cookie its landing page set: the link as
    the caller, and the one study it opens; None without a live link."""
    secret = request.cookies.get(sharing.COOKIE)
    if not secret or not sharing.plausible(secret):
        return None
    found = await lookup_sql.share_link(request.app.state.pool, sharing.digest(secret))
    if found is None:
        return None
    link_id, study, _left = found
    who = Principal(f"share-link:{link_id}", "share-link", None, frozenset({"share-link"}))
    return who, study


# nginx's auth_request subrequest keeps the original method (no body).
@router.api_route("/dicomweb", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
async def dicomweb(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_original_uri: Annotated[str, Header()] = "",
    x_original_method: Annotated[str, Header()] = "GET",
) -> Response:
    """Every decision is audited, one row each: the method, the resource at its level
    (study, series, instance, frames), the query's filters, and the client's address as
    the gateway saw it (X-Forwarded-For, trusted from the gateway alone; X-Original-Remote
    is not read: anyone could send it)."""
    uid = study_of(x_original_uri)
    write = x_original_method.upper() not in READ_METHODS
    async with audited(
        request,
        "dicomweb.write" if write else "dicomweb.read",
        dicomweb_resource(x_original_uri),
        client_address(request),
        method=x_original_method.upper(),
        filters=filters_of(urlsplit(x_original_uri).query),
    ) as decision:
        shared = None if authorization else await share_link_reader(request)
        if shared is not None:  # a patient's share link: its one study, reading
            decision.who, study = shared
            if not access.may_read_by_link(study, uid, write):
                raise Forbidden(access.NOT_ALLOWED)
            decision.status = 204
            return Response(status_code=204)
        decision.who = authenticate(request, authorization)
        response = await _decide(request, decision.who, x_original_uri, x_original_method)
        decision.status = response.status_code
        return response


async def _decide(request: Request, who: Principal, uri: str, method_name: str) -> Response:
    if method_name.upper() not in READ_METHODS:
        # STOW-RS: platform administrators only. Edges upload through central's REST API
        # (/orthanc/instances), which is where their gateway accounts are allowed.
        decision = access.may_write_images(who)
    else:
        study = await ownership.study_facts(request.app.state.pool, who, study_of(uri))
        decision = access.may_read(who, study, "viewer")  # own, pushed, 互认, consent
    if not decision:
        raise Forbidden(access.NOT_ALLOWED)
    return Response(status_code=204)


# What a hospital gateway account may do on central's REST API (behind /orthanc/): a row
# per call its edge makes, (method, path, check). Reads of a study's files are for studies
# the gateway's institution may read (its own, or granted to it: a push), and push lists
# are its own.
# (Uploads, POST /instances, lookups, POST /tools/lookup, hash checks, POST
# /imaging-cloud/verify, and the pushes' POSTs do not come here: the gateway sends them to
# the indexer's routes that read the body; see routes/ingest.py.)
Check = Callable[[Request, Principal, re.Match[str], str], Awaitable[access.Decision]]


@dataclass(frozen=True)
class GatewayCall:
    method: str
    path: re.Pattern[str]
    check: Check


async def _study_resource(
    request: Request, who: Principal, match: re.Match[str], _uri: str
) -> access.Decision:
    """A study's instance list, an instance's file: the study it is in must be readable.
    None: central holds no such resource (it answers 404); "": its study names no UID,
    refused like an unknown study."""
    uid = await request.app.state.central_qido.study_of_resource(match[1], match[2])
    pool = request.app.state.pool
    study = None if uid is None else await ownership.study_facts(pool, who, uid)
    return access.may_read_resource(who, study)


_PUSH_LIST_QUERY = re.compile(r"to=[A-Z0-9]{2,16}(&state=[a-z-]{1,20})?")


async def _push_list(
    _request: Request, who: Principal, _match: re.Match[str], uri: str
) -> access.Decision:
    # exactly ?to=<code>[&state=...]: no second key Orthanc might read as "to"
    query = urlsplit(uri).query
    to = parse_qs(query).get("to") if _PUSH_LIST_QUERY.fullmatch(query) else None
    return access.may_list_pushes(who, to)


async def _one_push(
    _request: Request, who: Principal, _match: re.Match[str], _uri: str
) -> access.Decision:
    return access.may_read_push(who)


GATEWAY_CALLS = [
    GatewayCall("GET", re.compile(r"/(studies)/([0-9a-f-]{44})/instances"), _study_resource),
    GatewayCall("GET", re.compile(r"/(instances)/([0-9a-f-]{44})/file"), _study_resource),
    GatewayCall("GET", re.compile(r"/imaging-cloud/pushes"), _push_list),
    GatewayCall("GET", re.compile(r"/imaging-cloud/pushes/[0-9a-f-]{36}"), _one_push),
]


def gateway_call(method: str, uri: str) -> tuple[GatewayCall, re.Match[str]] | None:
    """The row of GATEWAY_CALLS a request is, with its path's match (None: no row). A
    row's path matches the whole path (fullmatch: no trailing newline slips through)."""
    if "#" in uri or "_method" in uri.lower() or _EVASIVE.search(urlsplit(uri).path):
        return None
    path = urlsplit(uri).path.removeprefix("/orthanc")
    for call in GATEWAY_CALLS:
        match = call.path.fullmatch(path) if method == call.method else None
        if match:
            return call, match
    return None


async def gateway_may(request: Request, who: Principal, method: str, uri: str) -> access.Decision:
    """Central's REST API: platform administrators all of it; anyone else only the calls
    of GATEWAY_CALLS, each as its row's check decides (every check asks for a hospital's
    gateway itself): no one but an administrator gets past a row without its check."""
    if access.sees_whole_archive(who):
        return access.may_use_central(who, listed=True)
    found = gateway_call(method, uri)
    gate = access.may_use_central(who, listed=found is not None)
    if not gate:  # not a hospital's gateway, or no call of the edge's: nothing is looked up
        return gate
    assert found is not None
    call, match = found
    return await call.check(request, who, match, uri)


@router.api_route("/orthanc", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
async def orthanc_rest(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_original_uri: Annotated[str, Header()] = "",
    x_original_method: Annotated[str, Header()] = "GET",
) -> Response:
    """Central's REST API: platform administrators, and hospital gateways for the calls
    their edge makes. Every decision is audited, one row each (as dicomweb's)."""
    method = x_original_method.upper()
    resource = urlsplit(x_original_uri).path or None
    async with audited(
        request,
        f"orthanc.{method.lower()}",
        resource,
        client_address(request),
        method=method,
        filters=filters_of(urlsplit(x_original_uri).query),
    ) as decision:
        if not authorization and request.cookies.get(admin_console.ADMIN_COOKIE):
            # Orthanc Explorer in an administrator's browser (see admin_console.py)
            authorization = "Bearer " + request.cookies[admin_console.ADMIN_COOKIE]
        who = decision.who = authenticate(request, authorization)
        if not await gateway_may(request, who, method, x_original_uri):
            raise Forbidden(access.NOT_ALLOWED)
        decision.status = 204
        return Response(status_code=204)
