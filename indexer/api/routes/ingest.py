"""The calls of central's REST API whose subject is in the request body, which the
gateway's check cannot see: POST /orthanc/instances (an edge's upload, checked against the
file's own StudyInstanceUID, see services/ingest.py), POST /orthanc/tools/lookup (a UID),
POST /orthanc/imaging-cloud/verify (SOP UIDs and hashes; it can discard copies), and the
pushes' POSTs (the institution they speak for). The gateway sends them here instead of
straight to central."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response

from ...errors import Forbidden, IndexerError, InvalidRecord
from ...security.auth import Principal
from ...services import access, ingest, ownership
from ..audit_middleware import Decision, audited, client_address
from ..deps import authenticate

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)


def _edge_or_admin(request: Request, authorization: str | None) -> Principal:
    who = authenticate(request, authorization)
    if not access.may_stand_in(who):
        raise Forbidden(access.NOT_ALLOWED)
    return who


@router.post("/orthanc/instances")
async def upload(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """One DICOM file into the central archive: a hospital gateway account adds to its
    hospital's studies (or starts a new one), a platform administrator to any."""
    async with audited(request, "orthanc.post", "/instances", client_address(request)) as done:
        who = done.who = _edge_or_admin(request, authorization)
        stream = request.stream()
        try:
            checked, prefix = await ingest.split_header(stream)
        except ingest.Ambiguous as exc:
            if exc.study:  # the study it would have joined
                done.resource = f"study:{exc.study}"[:200]
            raise
        done.resource = f"study:{checked.study}"
        study = await ownership.study_facts(request.app.state.pool, who, checked.study)
        access.require(access.may_add(who, study))  # its own study, or a new one
        client = request.app.state.central_qido.client
        answer = await ingest.store(client, prefix, stream)
        done.status = answer.status_code
        if answer.status_code == 200:
            await _indexed_as_checked(client, done, checked, answer.json())
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )


async def _indexed_as_checked(
    client: httpx.AsyncClient, done: Decision, checked: ingest.Identity, stored: Any
) -> None:
    """Refuse (and take back) an instance that Orthanc indexed in another study than the
    one checked: Orthanc read the file otherwise. An instance that was already stored is
    left alone (it is someone else's); the audit row names the study it really is in.
    If the check itself fails (central times out, answers otherwise), an instance this
    upload stored is taken back too: what was not checked does not stay."""
    if not isinstance(stored, dict) or "ID" not in stored:
        raise ingest.CentralRefused("central archive: unexpected answer to an upload")
    new = stored.get("Status") == "Success"
    try:
        joined = await ingest.indexed_study(client, checked, stored)
    except (IndexerError, KeyError, TypeError, AttributeError) as exc:
        if new:
            await _take_back(client, done, str(stored["ID"]))
        log.warning("after-store check failed (%s); new instance taken back: %s", exc, new)
        raise ingest.CentralRefused(
            "central archive: the stored instance could not be checked"
        ) from exc
    if joined is None:
        return
    done.resource = f"study:{joined}"[:200]
    if new:
        await _take_back(client, done, str(stored["ID"]))
    raise ingest.Ambiguous(
        "body", "central read other identifying elements in this file than the check did"
    )


async def _take_back(client: httpx.AsyncClient, done: Decision, instance_id: str) -> None:
    try:
        await ingest.remove(client, instance_id)
    except ingest.CentralRefused as exc:  # the audit row names what is left at central
        done.resource = f"{done.resource or 'study:?'}/instances/{instance_id}"[:200]
        log.error("unchecked instance %s left at central: %s", instance_id, exc)
        raise


@router.post("/orthanc/tools/lookup")
async def lookup(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Central's /tools/lookup (Orthanc IDs of a DICOM UID) for the edges: a hospital's
    gateway finds only studies its hospital may read; any other UID, known or not, gets
    the same empty answer."""
    body = (await request.body())[:200].decode("ascii", "replace").strip()
    async with audited(request, "orthanc.lookup", "/tools/lookup", client_address(request)) as done:
        who = done.who = _edge_or_admin(request, authorization)
        done.status = 200
        study = await ownership.study_facts(request.app.state.pool, who, body)
        if not access.may_read(who, study, "edge"):  # own or granted (a push)
            return Response("[]", media_type="application/json")
        client = request.app.state.central_qido.client
        answer = await client.post("/tools/lookup", content=body)
        done.status = answer.status_code
        return Response(answer.content, status_code=done.status, media_type="application/json")


@router.post("/orthanc/imaging-cloud/verify")
async def verify(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Central's hash check of an edge's instances. A mismatching copy is discarded at
    central so the edge can send it again: only in the caller's own studies (or new ones).
    Instances of studies the caller may not read are answered as missing, whatever central
    holds, so the answer tells nothing about them."""
    async with audited(
        request, "orthanc.verify", "/imaging-cloud/verify", client_address(request)
    ) as done:
        who = done.who = _edge_or_admin(request, authorization)
        try:
            claimed = json.loads(await request.body())["instances"]
        except (ValueError, KeyError, TypeError):
            claimed = None
        if not isinstance(claimed, dict):
            raise InvalidRecord("instances", 'expected {"instances": {SOP UID: sha256}}')
        client = request.app.state.central_qido.client
        everything = access.sees_whole_archive(who)
        answer = await _central_verify(client, claimed, discard=everything)
        if not everything:
            answer = await _confine(request, who, client, claimed, answer)
        done.status = 200
        return Response(json.dumps(answer), media_type="application/json")


async def _central_verify(
    client: httpx.AsyncClient, claimed: dict[str, str], discard: bool
) -> dict[str, Any]:
    try:
        answer = await client.post(
            "/imaging-cloud/verify", json={"instances": claimed, "discard": discard}
        )
    except httpx.HTTPError as exc:
        raise ingest.CentralRefused(f"central archive: {type(exc).__name__}") from exc
    if answer.status_code == 400:
        raise InvalidRecord("instances", 'expected {"instances": {SOP UID: sha256}}')
    if answer.status_code != 200:
        raise ingest.CentralRefused(f"central archive answered {answer.status_code}")
    return dict(answer.json())


async def _confine(
    request: Request,
    who: Principal,
    client: httpx.AsyncClient,
    claimed: dict[str, str],
    answer: dict[str, Any],
) -> dict[str, Any]:
    """The caller's view of central's answer: instances of studies it may not read become
    missing; mismatching copies in its own studies are discarded now."""
    studies: dict[str, str] = answer.get("studies") or {}
    pool = request.app.state.pool
    readable: dict[str, bool] = {}  # study UID -> the caller may add to it (else: granted)
    for uid in set(studies.values()):
        study = await ownership.study_facts(pool, who, uid)
        if access.may_add(who, study):  # its own, or one the index knows no owner of
            readable[uid] = True
        elif access.may_read(who, study, "edge"):
            readable[uid] = False
    confirmed = [s for s in answer["confirmed"] if studies.get(s) in readable]
    mismatched = [s for s in answer["mismatched"] if studies.get(s) in readable]
    hidden = set(claimed) - set(confirmed) - set(mismatched)
    own_mismatched = {s: claimed[s] for s in mismatched if readable[studies[s]]}
    if own_mismatched:  # discard them, so the edge's resend can replace them
        await _central_verify(client, own_mismatched, discard=True)
    return {
        "confirmed": sorted(confirmed),
        "missing": sorted(hidden),
        "mismatched": sorted(mismatched),
    }


async def _relay(
    request: Request,
    authorization: str | None,
    path: str,
    claimant: str,
    action: str,
) -> Response:
    """Pass a JSON body to central once its institution field (`claimant`) is the caller's
    own, and for a new push the study is its own too."""
    async with audited(request, action, path[:200], client_address(request)) as done:
        who = done.who = _edge_or_admin(request, authorization)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidRecord("body", "a JSON object is expected")
        access.require(access.may_speak_for(who, claimant, body.get(claimant)))
        if claimant == "from_institution":
            uid = body.get("study_instance_uid")  # not a string: central refuses it (422)
            study = None
            if isinstance(uid, str):
                study = await ownership.study_facts(request.app.state.pool, who, uid)
            access.require(access.may_push(who, study))
        try:
            answer = await request.app.state.central_qido.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ingest.CentralRefused(f"central archive: {type(exc).__name__}") from exc
        done.status = answer.status_code
        return Response(answer.content, status_code=done.status, media_type="application/json")


@router.post("/orthanc/imaging-cloud/pushes")
async def push(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """A new push (跨院推送) recorded at central: from the caller's hospital, of its study."""
    return await _relay(
        request, authorization, "/imaging-cloud/pushes", "from_institution", "orthanc.push"
    )


@router.post("/orthanc/imaging-cloud/pushes/{push_id}/state")
async def push_state(
    push_id: Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")],
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """The receiving hospital's report on a push (central checks it is the receiver)."""
    return await _relay(
        request,
        authorization,
        f"/imaging-cloud/pushes/{push_id}/state",
        "institution",
        "orthanc.push-state",
    )
