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
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qs, parse_qsl, urlsplit

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from ...errors import Forbidden
from ...security.auth import PLATFORM_ADMIN, STAFF_ROLES, Principal
from ...services import lookup_sql, sharing
from ..audit_middleware import audited, client_address, dicomweb_resource, filters_of
from ..deps import authenticate
from . import admin_console

router = APIRouter(prefix="/v1/authz", include_in_schema=False)
_STUDY_PATH = re.compile(r"^/dicom-web/studies/((?=[0-9.]{1,64}(?:/|$))[0-9]+(?:\.[0-9]+)+)(?:/|$)")
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
            if not write and uid == study:
                decision.status = 204
                return Response(status_code=204)
            raise Forbidden("not allowed")
        decision.who = authenticate(request, authorization)
        response = await _decide(request, decision.who, x_original_uri, x_original_method)
        decision.status = response.status_code
        return response


async def _decide(request: Request, who: Principal, uri: str, method_name: str) -> Response:
    x_original_uri = uri
    method = method_name.upper()
    if method not in READ_METHODS:
        # STOW-RS: platform administrators only. Edges upload through central's REST API
        # (/orthanc/instances), which is where their gateway accounts are allowed.
        if who.has(PLATFORM_ADMIN):
            return Response(status_code=204)
        raise Forbidden("not allowed")
    if who.has(PLATFORM_ADMIN):
        return Response(status_code=204)
    uid = study_of(x_original_uri)
    if uid is not None and who.roles & STAFF_ROLES and who.institution:
        pool = request.app.state.pool
        institution = await lookup_sql.study_institution(pool, uid)
        if institution == who.institution:
            return Response(status_code=204)
        if institution is not None and await lookup_sql.has_grant(
            pool, uid, who.institution, who.subject
        ):
            return Response(status_code=204)  # pushed to this institution, 互认, consent
    raise Forbidden("not allowed")


# What a hospital gateway account may do on central's REST API (behind /orthanc/). Reads
# of a study's files are for studies the gateway's institution may read (its own, or
# granted to it: a push), and push lists are its own.
# (Uploads, POST /instances, lookups, POST /tools/lookup, hash checks, POST
# /imaging-cloud/verify, and the pushes' POSTs do not come here: the gateway sends them to
# the indexer's routes that read the body; see routes/ingest.py.)
GATEWAY_CALLS = [
    ("GET", re.compile(r"^/(studies)/([0-9a-f-]{44})/instances$")),
    ("GET", re.compile(r"^/(instances)/([0-9a-f-]{44})/file$")),
    ("GET", re.compile(r"^/imaging-cloud/pushes$")),
    ("GET", re.compile(r"^/imaging-cloud/pushes/[0-9a-f-]{36}$")),
]


_PUSH_LIST_QUERY = re.compile(r"to=[A-Z0-9]{2,16}(&state=[a-z-]{1,20})?")


def gateway_call(method: str, uri: str) -> re.Match[str] | None:
    if "#" in uri or "_method" in uri.lower() or _EVASIVE.search(urlsplit(uri).path):
        return None
    path = urlsplit(uri).path.removeprefix("/orthanc")
    for allowed, pattern in GATEWAY_CALLS:
        match = pattern.match(path) if method == allowed else None
        if match:
            return match
    return None


async def gateway_may(request: Request, who: Principal, method: str, uri: str) -> bool:
    match = gateway_call(method, uri)
    if match is None or not who.institution:
        return False
    if match.re.pattern.endswith("pushes$") and method == "GET":
        # exactly ?to=<own code>[&state=...]: no second key Orthanc might read as "to"
        return _PUSH_LIST_QUERY.fullmatch(urlsplit(uri).query) is not None and (
            parse_qs(urlsplit(uri).query).get("to") == [who.institution]
        )
    if match.re.groups != 2:
        return True
    uid = await request.app.state.central_qido.study_of_resource(match[1], match[2])
    if uid is None:
        return True  # central answers 404 itself: nothing to protect
    pool = request.app.state.pool
    return await lookup_sql.study_institution(pool, uid) == who.institution or (
        await lookup_sql.has_grant(pool, uid, who.institution, who.subject)
    )


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
        if who.has(PLATFORM_ADMIN) or (
            who.has("gateway") and await gateway_may(request, who, method, x_original_uri)
        ):
            decision.status = 204
            return Response(status_code=204)
        raise Forbidden("not allowed")
