"""Lookups: a master index ID to DICOMweb URLs, viewer and report; all exams of a person
across institutions (互认). ID numbers travel in request bodies, never in URLs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ...errors import Forbidden
from ...schemas import MasterIndexOut, PersonExams, PersonSearch
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1", tags=["lookup"])


@router.get("/master-index/{master_index_id}", response_model=MasterIndexOut)
def resolve_master_index(
    master_index_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{4,64}$")],
    who: Caller,
    reg: Reg,
) -> MasterIndexOut:
    """The exam, where its images are (DICOMweb study, series, metadata, QIDO, viewer) and
    its current report."""
    exam = reg.by_master_index(master_index_id)
    try:
        who.may_read(exam.institution_code)
    except Forbidden:
        who.may_search_persons()  # mutual recognition: treating staff of any institution
    report = reg.current_report(exam)
    return MasterIndexOut(
        master_index_id=master_index_id,
        exam=reg.exam_out(exam),
        report=reg.report_out(exam, report) if report is not None else None,
    )


@router.post("/persons/exams/search", response_model=PersonExams)
def person_exams(body: PersonSearch, who: Caller, reg: Reg) -> PersonExams:
    """All exams of a person across institutions, by national ID no. (in the body), filtered
    by modality, body part and date window; `purpose` states why (it is audited)."""
    who.may_search_persons()
    return PersonExams(exams=reg.person_exams(body))
