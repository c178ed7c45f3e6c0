"""The audit trail: auditors query and export it (JSON); hospital gateways report their
edge's DICOM operations into it (POST /api/v1/audit/edge-events)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from sqlalchemy import text

from ...schemas import NO_NUL
from ...security.auth import Principal
from ...services import access
from ...services.audit import event, record_now
from ..audit_middleware import filters_of_pairs
from ..deps import Caller, Reg, authenticate

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def audit_events(
    who: Caller,
    reg: Reg,
    request: Request,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    resource: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """Audit records, oldest first, as JSON (an export is the same call with a window).
    `resource` finds that resource and everything below it (study:S finds its series,
    instances and frames too)."""
    access.require(access.may_read_audit(who))
    rows = reg.session.execute(
        text(
            "SELECT id, at, actor, username, roles, institution, action, resource, purpose, "
            "source, outcome, method, filters, count, calling_ae, called_ae, answers, "
            "occurred_at, event_id, seal_seq, encode(hash, 'hex') AS hash FROM audit_events "
            "WHERE (CAST(:since AS timestamptz) IS NULL OR at >= :since) "
            "AND (CAST(:until AS timestamptz) IS NULL OR at < :until) "
            "AND (CAST(:actor AS text) IS NULL OR actor = :actor OR username = :actor) "
            "AND (CAST(:action AS text) IS NULL OR action = :action) "
            "AND (CAST(:resource AS text) IS NULL OR resource = :resource "
            "     OR starts_with(resource, :resource || '/')) "
            "ORDER BY id LIMIT :limit"
        ),
        {
            "since": since,
            "until": until,
            "actor": actor,
            "action": action,
            "resource": resource,
            "limit": limit,
        },
    )
    events: list[dict[str, Any]] = []
    for row in rows:
        item = dict(row._mapping)
        item["at"] = item["at"].isoformat()
        if item["occurred_at"] is not None:
            item["occurred_at"] = item["occurred_at"].isoformat()
        if item["event_id"] is not None:
            item["event_id"] = str(item["event_id"])
        item["filters"] = stored_filters(item["filters"])
        events.append(item)
    return Response(
        json.dumps({"events": events}, ensure_ascii=False), media_type="application/json"
    )


def stored_filters(raw: str | None) -> dict[str, Any] | None:
    """A row's filters as recorded; a value that is not a JSON object (a row written
    before filters were always valid JSON) as {"(unparsed)": the text}: never a 500."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"(unparsed)": raw}
    return value if isinstance(value, dict) else {"(unparsed)": raw}


AeTitle = Annotated[str, StringConstraints(pattern=r"^[\x20-\x5b\x5d-\x7e]{0,16}$")]
# a DICOM keyword, or a tag as gggg,eeee or (gggg,eeee)
Keyword = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9(),]{1,64}$")]
Value = Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)]
OUTCOMES = {"ok": 200, "refused": 403, "failed": 500}


class EdgeEvent(BaseModel):
    """One DICOM operation at an edge, as its gateway reports it."""

    model_config = ConfigDict(extra="forbid")
    event_id: uuid.UUID  # the edge's own: a retried batch adds nothing
    at: AwareDatetime
    action: Literal[
        "dicom.c-find", "dicom.c-move", "dicom.c-get", "dicom.c-store",
        "dicom.association-refused",
    ]  # fmt: skip
    calling_ae: AeTitle
    called_ae: AeTitle
    source: IPv4Address | IPv6Address | Literal[""]  # "": the edge did not learn it
    level: Literal["PATIENT", "STUDY", "SERIES", "IMAGE", ""]
    query: dict[Keyword, Value] = Field(default_factory=dict, max_length=64)
    answers: int = Field(ge=0, le=2_000_000_000)
    outcome: Literal["ok", "refused", "failed"]

    @field_validator("at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        if not 2000 <= value.year <= 2999:
            raise ValueError("at must be a time of this era (ISO-8601, UTC)")
        return value.astimezone(dt.UTC)


class EdgeEvents(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EdgeEvent] = Field(max_length=500)


async def _async_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return authenticate(request, authorization)


_UID_KEYS = (
    ("StudyInstanceUID", "study"),
    ("SeriesInstanceUID", "series"),
    ("SOPInstanceUID", "instance"),
)
_UID = r"^[0-9]+(\.[0-9]+)+$"


def edge_row(who: Principal, item: EdgeEvent) -> dict[str, Any]:
    """The audit row of an edge's operation: the UIDs asked for as the resource (so
    `resource=study:S` finds retrievals of S at the edges too), else the level; the
    query as filters, personal values pseudonymised."""
    parts = []
    for key, level in _UID_KEYS:
        value = item.query.get(key, "")
        if not re.fullmatch(_UID, value):
            break
        parts.append(f"{level}:{value}")
    pairs = list(item.query.items())
    if item.level and "QueryRetrieveLevel" not in item.query:
        pairs.insert(0, ("QueryRetrieveLevel", item.level))
    method = item.action.removeprefix("dicom.").upper()
    return event(
        who,
        item.action,
        "/".join(parts) or f"dicom:{item.level or '-'}",
        str(item.source) or None,
        OUTCOMES[item.outcome],
        method="A-ASSOCIATE" if method == "ASSOCIATION-REFUSED" else method,
        filters=filters_of_pairs(pairs),
        calling_ae=item.calling_ae,
        called_ae=item.called_ae,
        answers=item.answers,
        occurred_at=item.at,
        event_id=item.event_id,
    )


@router.post("/edge-events")
async def edge_events(
    body: EdgeEvents,
    request: Request,
    who: Annotated[Principal, Depends(_async_caller)],
) -> dict[str, int]:
    """A hospital gateway reports its edge's DICOM operations (C-FIND, C-MOVE, C-GET,
    C-STORE, refused associations): each becomes one audit row, as the gateway account
    and its institution, written before the answer. `accepted` counts the batch's events
    now on record (an event_id already recorded counts, and adds nothing)."""
    access.require(access.may_report_edge_events(who))
    if body.events:
        await record_now(request.app.state.pool, [edge_row(who, e) for e in body.events])
    return {"accepted": len(body.events)}
