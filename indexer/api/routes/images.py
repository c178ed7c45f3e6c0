"""Images meet their exam: arrivals reported by edges and central, and the reconciliation
list of studies that match no exam."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy.exc import IntegrityError

from ...schemas import CODE, UID, ArrivalResult, ExamOut, Resolve, StudyArrival, UnmatchedStudy
from ...services import access
from ...services.access import StudyFacts
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1", tags=["images"])


@router.post("/institutions/{code}/studies", response_model=ArrivalResult)
def study_arrived(
    code: Annotated[str, Path(pattern=CODE)], body: StudyArrival, who: Caller, reg: Reg
) -> ArrivalResult:
    """A study seen at the institution's edge (or central): linked to its exam by
    institution + accession no., or put on the reconciliation list."""
    access.require(access.may_write_records(who, code))
    try:
        result = reg.record_arrival(code, body)
        reg.session.commit()
    except IntegrityError:
        # The same study's first arrival reported twice at once (the edge, and central or
        # a retry): the other insert won; this one now finds the row and updates it.
        reg.session.rollback()
        result = reg.record_arrival(code, body)
        reg.session.commit()
    return result


@router.get("/reconciliation", response_model=list[UnmatchedStudy])
def unmatched(
    who: Caller,
    reg: Reg,
    institution: Annotated[str | None, Query(pattern=CODE)] = None,
) -> list[UnmatchedStudy]:
    """Studies matching no exam (an institution's admins see their own)."""
    access.require(access.may_list_unmatched(who, institution))
    return reg.unmatched(institution)


@router.post("/reconciliation/{study_instance_uid}", response_model=ExamOut)
def resolve(
    study_instance_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    body: Resolve,
    who: Caller,
    reg: Reg,
) -> ExamOut:
    """Link an unmatched study to the exam an operator names."""
    study = StudyFacts(study_instance_uid, reg.study_institution(study_instance_uid))
    access.require(access.may_resolve(who, study))
    exam = reg.resolve(study_instance_uid, body.exam_no)
    reg.session.commit()
    return reg.exam_out(exam)
