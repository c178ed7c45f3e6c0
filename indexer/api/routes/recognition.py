"""互认 (#16): clinicians' recognition decisions on prior exams, and the statistics.

POST /api/v1/recognition/decisions: a clinician or radiologist records whether a prior exam
of another institution (by master index ID) is recognised, or not and why (a reason code of
services/recognition.REASONS); the decision is their institution's, replaced if it decides
again. Audited (the /api/v1 middleware: caller, master index ID, purpose, status).
GET /api/v1/recognition/statistics (.csv): recognition rates for hospital admins (their
own institution) and regulators (every one); counts only, no patient data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import Field

from ...errors import InvalidRecord, NotFound
from ...schemas import NO_NUL, Strict
from ...security.auth import Principal
from ...services import access, recognition, recognition_stats
from ..deps import authenticate

router = APIRouter(prefix="/v1/recognition", tags=["recognition"])


async def async_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return authenticate(request, authorization)


Who = Annotated[Principal, Depends(async_caller)]


class DecisionIn(Strict):
    master_index_id: str = Field(pattern=r"^[A-Za-z0-9_-]{4,64}$")
    recognised: bool
    reason: str | None = Field(default=None, max_length=32, description="see REASONS")
    reason_text: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    purpose: str = Field(min_length=2, max_length=200, pattern=NO_NUL)


async def record_decision(request: Request, who: Principal, body: DecisionIn) -> dict[str, object]:
    """The one way a decision is recorded (the API and the workspace's form): the exam
    from the index, the access decision, then the record. Audited as the exam's."""
    request.state.audit_resource = f"master-index:{body.master_index_id}"
    request.state.audit_purpose = body.purpose
    decided = recognition.choice(body.recognised, body.reason, body.reason_text)
    # each recording's outcome stays in the audit trail, also when a later one replaces it
    request.state.audit_filters = {"outcome": decided.outcome}
    pool = request.app.state.pool
    exam = await recognition.exam_facts(pool, body.master_index_id)
    if exam is None:
        raise NotFound("no exam with this master index ID")
    decision = access.require(access.may_record_recognition(who, exam.institution_code))
    deciding = access.confined_to(decision)
    recorded = await recognition.record(pool, exam, deciding, who.subject, decided, body.purpose)
    return {"master_index_id": body.master_index_id, **recorded}


@router.post("/decisions")
async def decide(body: DecisionIn, who: Who, request: Request) -> Response:
    """Record this institution's 互认 decision on a prior exam of another institution."""
    recorded = await record_decision(request, who, body)
    return Response(json.dumps(recorded, ensure_ascii=False), media_type="application/json")


@router.get("/reasons")
async def reasons(who: Who) -> dict[str, dict[str, str]]:
    """The documented reason codes for not recognising an exam, with their labels."""
    return {code: {"zh": zh, "en": en} for code, (zh, en) in recognition.REASONS.items()}


# The statistics' filters, for the API and the workspace's form alike (a form sends an empty
# field for "any": taken as not given).
Code = Annotated[str | None, Query(pattern=r"^([A-Z0-9]{2,16})?$")]
Modality = Annotated[str | None, Query(pattern=r"^([A-Z]{2,4})?$")]
From = Annotated[str | None, Query(alias="from", pattern=r"^(\d{4}-\d{2})?$")]
To = Annotated[str | None, Query(alias="to", pattern=r"^(\d{4}-\d{2})?$")]
By = Annotated[Literal["exam", "deciding"], Query(description="whose institution groups")]


@dataclass(frozen=True)
class StatsAsked:
    by: str
    institution: str | None
    modality: str | None
    period_from: str | None
    period_to: str | None


def stats_asked(
    by: By = "exam",
    institution: Code = None,
    modality: Modality = None,
    period_from: From = None,
    period_to: To = None,
) -> StatsAsked:
    return StatsAsked(
        by, institution or None, modality or None, period_from or None, period_to or None
    )


Asked = Annotated[StatsAsked, Depends(stats_asked)]


def stats_query(who: Principal, asked: StatsAsked) -> recognition_stats.Query:
    """The statistics the caller may read (the access decision's scope), as asked."""
    decision = access.require(access.may_read_recognition_statistics(who, asked.institution))
    scope = None if access.unconfined(decision) else access.confined_to(decision)
    try:
        start = recognition_stats.month(asked.period_from)
        end = recognition_stats.month(asked.period_to)
    except ValueError:
        raise InvalidRecord("from", "a month as YYYY-MM") from None
    return recognition_stats.Query(scope, asked.by, asked.institution, asked.modality, start, end)


@router.get("/statistics")
async def statistics(who: Who, request: Request, asked: Asked) -> Response:
    """Recognition rate by institution (`by`: the exams' or the deciding one), modality
    and month; exams not repeated; reasons for not recognising."""
    query = stats_query(who, asked)
    answer = await recognition_stats.statistics(request.app.state.pool, query)
    return Response(json.dumps(answer, ensure_ascii=False), media_type="application/json")


@router.get("/statistics.csv")
async def statistics_csv(who: Who, request: Request, asked: Asked) -> Response:
    """The same statistics as CSV (spreadsheet-safe cells)."""
    query = stats_query(who, asked)
    answer = await recognition_stats.statistics(request.app.state.pool, query)
    return Response(
        recognition_stats.to_csv(answer),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="recognition-statistics.csv"'},
    )
