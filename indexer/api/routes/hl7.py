"""HL7 v2 intake (#16), the operator's side: the messages kept because they named a
patient or an exam not registered yet (sequence problems), and running one again once it
is. Who may: the institution's hospital admins (their own) and platform admins (all), as
for the reconciliation list of images that matched no exam."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlalchemy import select

from ...errors import NotFound
from ...hl7.config import DEFAULT_UTC_OFFSET
from ...hl7.handlers import retry
from ...models.hl7 import Hl7Message
from ...schemas import CODE
from ...services import access
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1/hl7", tags=["hl7"])


class Problem(BaseModel):
    id: int
    institution_code: str
    control_id: str
    message_type: str
    received_at: dt.datetime
    reason: str | None
    outcome: str


def _out(row: Hl7Message) -> Problem:
    return Problem(
        id=row.id, institution_code=row.institution_code, control_id=row.control_id,
        message_type=row.message_type, received_at=row.received_at, reason=row.reason,
        outcome=row.outcome,
    )  # fmt: skip


@router.get("/problems", response_model=list[Problem])
def problems(
    who: Caller,
    reg: Reg,
    institution: Annotated[str | None, Query(pattern=CODE)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[Problem]:
    """Messages answered AE and kept (oldest first); no message content, only the
    location and rule of the problem."""
    access.require(access.may_list_unmatched(who, institution))
    query = select(Hl7Message).where(Hl7Message.outcome == "problem")
    if institution:
        query = query.where(Hl7Message.institution_code == institution)
    rows = reg.session.execute(query.order_by(Hl7Message.received_at).limit(limit)).scalars()
    return [_out(row) for row in rows]


@router.post("/problems/{problem_id}/retry", response_model=Problem)
def retry_problem(
    problem_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Caller, reg: Reg
) -> Problem:
    """Run a kept message again (its patient or exam registered since): outcome
    "resolved", or still "problem" with the reason."""
    row = reg.session.get(Hl7Message, problem_id, with_for_update=True)
    if row is None or row.outcome != "problem":
        raise NotFound("no such kept message")
    access.require(access.may_list_unmatched(who, row.institution_code))
    retry(reg, reg.pii, row, DEFAULT_UTC_OFFSET)
    reg.session.commit()
    return _out(row)
