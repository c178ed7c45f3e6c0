"""The two calls of central's REST API whose subject is in the request body, which the
gateway's check cannot see: POST /orthanc/instances (an edge's upload, checked against the
file's own StudyInstanceUID, see services/ingest.py) and POST /orthanc/tools/lookup (a
UID). The gateway sends them here instead of straight to central."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from ...errors import Forbidden, Unauthenticated
from ...security.auth import PLATFORM_ADMIN, Principal
from ...services import ingest, lookup_sql
from ...services.audit import event
from ..deps import authenticate

router = APIRouter(include_in_schema=False)


def _edge_or_admin(request: Request, authorization: str | None) -> Principal:
    who = authenticate(request, authorization)
    if not who.has(PLATFORM_ADMIN, "gateway"):
        raise Forbidden("not allowed")
    return who


async def _may_add_to(request: Request, who: Principal, uid: str) -> bool:
    if who.has(PLATFORM_ADMIN):
        return True
    if not who.has("gateway") or not who.institution:
        return False
    owner = await lookup_sql.study_institution(request.app.state.pool, uid)
    return owner is None or owner == who.institution  # a new study, or one of its own


@router.post("/orthanc/instances")
async def upload(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """One DICOM file into the central archive: a hospital gateway account adds to its
    hospital's studies (or starts a new one), a platform administrator to any."""
    who = None
    uid = None
    status = 500
    try:
        who = _edge_or_admin(request, authorization)
        stream = request.stream()
        uid, prefix = await ingest.split_header(stream)
        if not await _may_add_to(request, who, uid):
            raise Forbidden("this study belongs to another institution")
        answer = await ingest.store(request.app.state.central_qido.client, prefix, stream)
        status = answer.status_code
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )
    except (Unauthenticated, Forbidden) as exc:
        status = exc.status
        raise
    finally:
        await request.app.state.audit.record(
            event(
                who,
                "orthanc.post",
                f"study:{uid}" if uid else "/instances",
                _source(request),
                status,
            ),
            dedupe=True,
        )


@router.post("/orthanc/tools/lookup")
async def lookup(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Central's /tools/lookup (Orthanc IDs of a DICOM UID) for the edges: a hospital's
    gateway finds only studies its hospital may read; any other UID, known or not, gets
    the same empty answer."""
    who = None
    status = 500
    body = (await request.body())[:200].decode("ascii", "replace").strip()
    try:
        who = _edge_or_admin(request, authorization)
        status = 200
        if not who.has(PLATFORM_ADMIN) and not await _may_read(request, who, body):
            return Response("[]", media_type="application/json")
        client = request.app.state.central_qido.client
        answer = await client.post("/tools/lookup", content=body)
        status = answer.status_code
        return Response(answer.content, status_code=status, media_type="application/json")
    except (Unauthenticated, Forbidden) as exc:
        status = exc.status
        raise
    finally:
        await request.app.state.audit.record(
            event(who, "orthanc.lookup", "/tools/lookup", _source(request), status), dedupe=True
        )


async def _may_read(request: Request, who: Principal, uid: str) -> bool:
    """A study UID the gateway's hospital may read: its own, or granted (a push)."""
    if not who.institution:
        return False
    pool = request.app.state.pool
    owner = await lookup_sql.study_institution(pool, uid)
    if owner is None:
        return False
    return owner == who.institution or await lookup_sql.has_grant(
        pool, uid, who.institution, who.subject
    )


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None
