"""Lookups: a master index ID to DICOMweb URLs, viewer and report; all exams of a person
across institutions (互认). ID numbers travel in request bodies, never in URLs.

Async, one statement each on the async pool: the platform's hottest requests.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from ...errors import InvalidRecord, NotFound
from ...schemas import NO_NUL, MasterIndexOut, PersonExams, PersonSearch
from ...security.auth import Principal
from ...security.pii import name_digests
from ...services import access, lookup_sql, ownership
from ..deps import authenticate, get_pii

router = APIRouter(prefix="/v1", tags=["lookup"])


async def async_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return authenticate(request, authorization)


Who = Annotated[Principal, Depends(async_caller)]


def _json(body: object) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")


MUTUAL_RECOGNITION_HOURS = 24


@router.get("/master-index/{master_index_id}", response_model=MasterIndexOut)
async def resolve_master_index(
    master_index_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{4,64}$")],
    who: Who,
    request: Request,
    purpose: Annotated[str | None, Query(min_length=2, max_length=200, pattern=NO_NUL)] = None,
) -> Response:
    """The exam, where its images are (DICOMweb study, series, metadata, QIDO, viewer) and
    its current report.

    Another institution's exam (互认) is for treating clinicians and radiologists who state
    a `purpose`: it is audited, and their institution may read the study's images for 24 h.
    """
    state = request.app.state
    found = await lookup_sql.master_index(state.pool, state.settings.gateway_url, master_index_id)
    if found is None:
        raise NotFound("no exam with this master index ID")
    exam = found["exam"]
    decision = access.require(access.may_look_up_exam(who, exam["institution_code"], purpose))
    if decision.basis == access.MUTUAL_RECOGNITION and decision.scope is not None:
        request.state.audit_purpose = purpose
        uid = exam["study_instance_uid"]
        # only the study's owner by arrival shares it: an exam naming another hospital's
        # study, or one with no arrival yet, opens nothing (services/ownership)
        if isinstance(uid, str) and access.may_open_by_mutual_recognition(
            await ownership.arrival_facts(state.pool, uid), exam["institution_code"]
        ):
            await lookup_sql.grant_mutual_recognition(
                state.pool,
                uid,
                exam["institution_code"],
                decision.scope,
                str(purpose),
                who.subject,
                MUTUAL_RECOGNITION_HOURS,
            )
    return _json(found)


@router.post("/persons/exams/search", response_model=PersonExams)
async def person_exams(body: PersonSearch, who: Who, request: Request) -> Response:
    """All exams of a person across institutions, by national ID no. (in the body), filtered
    by modality, body part and date window; `purpose` states why (it is audited).

    Or by 汉字 name with birth date: `name` (the full name, 马华 or 马^华) finds the
    patients of that name and birth date at every institution and the exams of the persons
    they are; `family_name` finds only among the caller's own institution's patients."""
    access.require(access.may_search_persons(who))
    state = request.app.state
    pii = get_pii()
    by_name: tuple[str, str | None] | None = None
    if body.national_id is not None:
        digest = pii.blind_index(body.national_id, "national_id")
        request.state.audit_resource = "person:" + digest.hex()[:24]  # pseudonymised
    else:
        assert body.birth_date is not None  # PersonSearch requires it with a name
        kind = "name" if body.name else "family"
        digests = name_digests(pii, body.name or body.family_name or "", body.birth_date)
        if not digests:
            raise InvalidRecord(kind, "holds no letters of a name")
        among = None  # a full name: every institution's patients
        if kind == "family":
            among = access.confined_to(access.require(access.may_search_family_name(who)))
        digest = digests[kind]
        by_name = (kind, among)
        request.state.audit_resource = f"person-{kind}:" + digest.hex()[:24]  # pseudonymised
    request.state.audit_purpose = body.purpose
    return _json(
        await lookup_sql.person_exams(state.pool, state.settings.gateway_url, body, digest, by_name)
    )
