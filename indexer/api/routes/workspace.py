"""The clinician's 互认 workspace (#16): server-rendered pages under /workspace.

Plain HTML forms, no script (the pages' CSP runs none). A national ID number or an MRN
travels only in a POST body, never in a URL; every page is audited (the middleware covers
/workspace: caller, action, resource, purpose, status). The lookups are the API's own
route functions (routes/lookup.py), called as they are: the same access decisions, the
same 互认 grant opened by the master-index lookup, the same audit resource and purpose.
Decisions go through routes/recognition.record_decision, as the API's do.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from ...errors import IndexerError, InvalidRecord
from ...schemas import PersonSearch
from ...security.auth import Principal
from ...services import access, recognition, recognition_stats
from ...web.pages import NO_STORE, render
from ...web.session import WebLogin
from ..audit_middleware import pseudonym
from . import lookup
from .recognition import Asked, DecisionIn, record_decision, stats_query

AREA = "/workspace"
LOGIN = WebLogin(AREA, access.may_use_workspace)
router = APIRouter(include_in_schema=False)
router.include_router(LOGIN.router())
Who = Annotated[Principal, Depends(LOGIN.caller)]
Text = Annotated[str, Form(max_length=200)]
MODALITIES = ("CT", "MR", "DX", "CR", "US", "MG", "NM", "PT", "XA", "RF")


def _page(request: Request, template: str, who: Principal, **context: Any) -> HTMLResponse:
    return render(
        request,
        template,
        who,
        area=AREA,
        purposes=recognition.PURPOSES,
        reasons=recognition.REASONS,
        modalities=MODALITIES,
        can_search=bool(access.may_search_persons(who)),
        can_read_statistics=bool(access.may_read_recognition_statistics(who, None)),
        **context,
    )


def _refused(request: Request, who: Principal, exc: IndexerError) -> HTMLResponse:
    message = str(exc)
    if isinstance(exc, InvalidRecord):
        message = f"{exc.field}: {message}"
    return _page(request, "refused.html", who, message=message, status_code=exc.status)


def _validation(exc: ValidationError) -> str:
    """A form's validation errors by field and rule, never the value typed."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()
    )


@router.get(AREA + "/", name="workspace_home")
async def home(request: Request, who: Who) -> HTMLResponse:
    return _page(request, "workspace_search.html", who, form={})


def _date(text: str) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


@router.post(AREA + "/search", name="workspace_search")
async def search(
    request: Request,
    who: Who,
    id_kind: Annotated[str, Form(pattern=r"^(national_id|mrn)$")] = "national_id",
    id_value: Annotated[str, Form(max_length=64)] = "",
    purpose_choice: Text = "",
    purpose_text: Text = "",
    modality: Annotated[str, Form(max_length=4)] = "",
    body_part: Annotated[str, Form(max_length=64)] = "",
    date_from: Annotated[str, Form(max_length=10)] = "",
    date_to: Annotated[str, Form(max_length=10)] = "",
) -> HTMLResponse:
    """A patient's exams across every hospital: by national ID no. (the API's person
    lookup) or by MRN at the caller's own hospital. No purpose: nothing is looked up."""
    form = {
        "id_kind": id_kind,
        "purpose_choice": purpose_choice,
        "purpose_text": purpose_text,
        "modality": modality,
        "body_part": body_part,
        "date_from": date_from,
        "date_to": date_to,
    }  # the ID itself is not shown back (the page may stay on a shared screen)
    purpose = recognition.purpose_of(purpose_choice, purpose_text)
    if purpose is None:
        return _page(
            request,
            "workspace_search.html",
            who,
            form=form,
            error="请说明调阅目的 State the purpose of the lookup: nothing is shown without one",
            status_code=422,
        )
    try:
        start, end = _date(date_from), _date(date_to)
    except ValueError:
        return _page(
            request, "workspace_search.html", who, form=form, error="date: YYYY-MM-DD",
            status_code=422,
        )  # fmt: skip
    try:
        if id_kind == "mrn":
            exams = await _by_mrn(request, who, id_value, purpose, modality, body_part, start, end)
        else:
            body = PersonSearch(
                national_id=id_value,
                purpose=purpose,
                modalities=[modality] if modality else [],
                body_part=body_part or None,
                date_from=start,
                date_to=end,
            )
            answer = await lookup.person_exams(body, who, request)
            exams = json.loads(bytes(answer.body))["exams"]
        await recognition.add_details(request.app.state.pool, exams)
    except ValidationError as exc:
        return _page(
            request, "workspace_search.html", who, form=form, error=_validation(exc),
            status_code=422,
        )  # fmt: skip
    except IndexerError as exc:
        return _refused(request, who, exc)
    return _page(request, "workspace_timeline.html", who, form=form, purpose=purpose, exams=exams)


async def _by_mrn(
    request: Request,
    who: Principal,
    mrn: str,
    purpose: str,
    modality: str,
    body_part: str,
    start: dt.date | None,
    end: dt.date | None,
) -> list[dict[str, Any]]:
    """By the patient's MRN at the caller's own institution (the decision's scope),
    audited like the API's person lookup: pseudonymised resource, the purpose."""
    access.require(access.may_search_persons(who))
    code = access.confined_to(access.require(access.may_search_by_own_mrn(who)))
    mrn = mrn.strip()
    if not mrn:
        raise InvalidRecord("id_value", "an MRN is required")
    request.state.audit_resource = f"patient:{code}/" + pseudonym("mrn", f"{code}/{mrn}")
    request.state.audit_purpose = purpose
    filters = {
        "modalities": [modality] if modality else None,
        "body_part": body_part or None,
        "limit": 100,
        **recognition.window(start, end),
    }
    return await recognition.exams_by_mrn(
        request.app.state.pool, request.app.state.settings.gateway_url, code, mrn, filters
    )


async def _exam_page(
    request: Request, who: Principal, master_index_id: str, purpose: str, **context: Any
) -> HTMLResponse:
    """One exam through the API's master-index lookup (the 互认 grant that the viewer
    then uses, audited with the purpose), its report apart from the images."""
    request.state.audit_resource = f"master-index:{master_index_id}"  # as the API's path
    answer = await lookup.resolve_master_index(master_index_id, who, request, purpose)
    found = json.loads(bytes(answer.body))
    names = await recognition.institution_names(
        request.app.state.pool, [found["exam"]["institution_code"]]
    )
    return _page(
        request,
        "workspace_exam.html",
        who,
        found=found,
        exam=found["exam"],
        report=found["report"],
        institution_name=names.get(found["exam"]["institution_code"]),
        purpose=purpose,
        **context,
    )


MasterIndexId = Annotated[str, Form(pattern=r"^[A-Za-z0-9_-]{4,64}$")]


@router.post(AREA + "/exam", name="workspace_exam")
async def exam(
    request: Request, who: Who, master_index_id: MasterIndexId, purpose: Text = ""
) -> HTMLResponse:
    if len(purpose.strip()) < 2:
        return _page(
            request, "refused.html", who, message="请说明调阅目的 State the purpose",
            status_code=422,
        )  # fmt: skip
    try:
        return await _exam_page(request, who, master_index_id, purpose.strip())
    except IndexerError as exc:
        return _refused(request, who, exc)


@router.post(AREA + "/decisions", name="workspace_decision")
async def decide(
    request: Request,
    who: Who,
    master_index_id: MasterIndexId,
    purpose: Text = "",
    outcome: Annotated[str, Form(max_length=32)] = "",
    reason_text: Text = "",
) -> HTMLResponse:
    """A 互认 decision from the exam page's form: "recognised" or a reason code."""
    try:
        body = DecisionIn(
            master_index_id=master_index_id,
            recognised=outcome == recognition.RECOGNISED,
            reason=None if outcome == recognition.RECOGNISED else (outcome or None),
            reason_text=reason_text or None,
            purpose=purpose,
        )
    except ValidationError as exc:
        return _page(request, "refused.html", who, message=_validation(exc), status_code=422)
    try:
        recorded = await record_decision(request, who, body)
    except IndexerError as exc:
        return _refused(request, who, exc)
    return _page(
        request,
        "workspace_decided.html",
        who,
        recorded=recorded,
        purpose=body.purpose,
        label=recognition.REASONS.get(str(recorded["outcome"])),
    )


@router.get(AREA + "/statistics", name="workspace_statistics")
async def statistics(request: Request, who: Who, asked: Asked) -> HTMLResponse:
    """Recognition statistics (hospital admins: their own institution; regulators: all)."""
    try:
        query = stats_query(who, asked)
        answer = await recognition_stats.statistics(request.app.state.pool, query)
    except IndexerError as exc:
        return _refused(request, who, exc)
    return _page(
        request,
        "workspace_statistics.html",
        who,
        answer=answer,
        query=query,
        csv_query=request.url.query,
    )


@router.get(AREA + "/statistics.csv", name="workspace_statistics_csv")
async def statistics_csv(request: Request, who: Who, asked: Asked) -> Response:
    try:
        query = stats_query(who, asked)
        answer = await recognition_stats.statistics(request.app.state.pool, query)
    except IndexerError as exc:
        return _refused(request, who, exc)
    return Response(
        recognition_stats.to_csv(answer),
        media_type="text/csv; charset=utf-8",
        headers={
            **NO_STORE,
            "Content-Disposition": 'attachment; filename="recognition-statistics.csv"',
        },
    )
