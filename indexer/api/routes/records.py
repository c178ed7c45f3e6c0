"""Intake and reading of an institution's records: patients, exams, reports, bulk."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from ...errors import NotFound
from ...schemas import (
    CODE,
    KEY,
    BulkIn,
    BulkOut,
    ExamIn,
    ExamOut,
    ExamWriteResult,
    InstitutionIn,
    PatientIn,
    PatientOut,
    ReportHistory,
    ReportIn,
    ReportOut,
    ReportWriteResult,
    WriteResult,
)
from ...services import access
from ...services.bulk import bulk_intake
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1/institutions", tags=["records"])
Code = Annotated[str, Path(pattern=CODE, description="institution code")]
Mrn = Annotated[str, Path(pattern=KEY, description="medical record no. (病历号)")]
ExamNo = Annotated[str, Path(pattern=KEY, description="exam no. (accession)")]


def _notify_master_index(request: Request) -> None:
    queue = getattr(request.app.state, "master_index", None)
    if queue is not None:
        queue.notify()


@router.put("/{code}", response_model=WriteResult)
def put_institution(code: Code, body: InstitutionIn, who: Caller, reg: Reg) -> WriteResult:
    """Register an institution (platform administrators)."""
    access.require(access.may_register_institution(who))
    outcome = reg.put_institution(code, body.name)
    reg.session.commit()
    return WriteResult(outcome=outcome)  # type: ignore[arg-type]


@router.put("/{code}/patients/{mrn}", response_model=WriteResult)
def put_patient(
    code: Code, mrn: Mrn, body: PatientIn, who: Caller, reg: Reg, request: Request
) -> WriteResult:
    """Create or update a patient registration; the same record twice changes nothing."""
    access.require(access.may_write_records(who, code))
    outcome = reg.put_patient(code, mrn, body)
    reg.session.commit()
    _notify_master_index(request)
    return WriteResult(outcome=outcome)  # type: ignore[arg-type]


@router.get("/{code}/patients/{mrn}", response_model=PatientOut)
def get_patient(code: Code, mrn: Mrn, who: Caller, reg: Reg) -> PatientOut:
    """A patient registration; ID and phone numbers are masked."""
    access.require(access.may_read_records(who, code))
    return reg.get_patient(code, mrn)


@router.put("/{code}/exams/{exam_no}", response_model=ExamWriteResult)
def put_exam(
    code: Code, exam_no: ExamNo, body: ExamIn, who: Caller, reg: Reg, request: Request
) -> ExamWriteResult:
    """Create or update an exam; its master index ID is requested from the platform."""
    access.require(access.may_write_records(who, code))
    outcome, exam = reg.put_exam(code, exam_no, body)
    reg.session.commit()
    _notify_master_index(request)
    return ExamWriteResult(outcome=outcome, exam=reg.exam_out(exam))  # type: ignore[arg-type]


@router.get("/{code}/exams/{exam_no}", response_model=ExamOut)
def get_exam(code: Code, exam_no: ExamNo, who: Caller, reg: Reg) -> ExamOut:
    access.require(access.may_read_records(who, code))
    return reg.exam_out(reg.get_exam(code, exam_no))


@router.put("/{code}/exams/{exam_no}/report", response_model=ReportWriteResult)
def put_report(
    code: Code, exam_no: ExamNo, body: ReportIn, who: Caller, reg: Reg
) -> ReportWriteResult:
    """Create the report, or revise it (the earlier version stays in the history).

    Give `base_version` to be told (409) when someone revised the report meanwhile.
    """
    access.require(access.may_write_records(who, code))
    outcome, report = reg.put_report(code, exam_no, body)
    exam = reg.get_exam(code, exam_no)
    reg.session.commit()
    return ReportWriteResult(outcome=outcome, report=reg.report_out(exam, report))  # type: ignore[arg-type]


@router.get("/{code}/exams/{exam_no}/report", response_model=ReportOut)
def get_report(code: Code, exam_no: ExamNo, who: Caller, reg: Reg) -> ReportOut:
    """The current report; earlier versions at .../report/versions."""
    access.require(access.may_read_records(who, code))
    exam = reg.get_exam(code, exam_no)
    report = reg.current_report(exam)
    if report is None:
        raise NotFound("this exam has no report yet")
    return reg.report_out(exam, report)


@router.get("/{code}/exams/{exam_no}/report/versions", response_model=ReportHistory)
def get_report_versions(code: Code, exam_no: ExamNo, who: Caller, reg: Reg) -> ReportHistory:
    access.require(access.may_read_records(who, code))
    exam = reg.get_exam(code, exam_no)
    versions = reg.report_history(exam)
    if not versions:
        raise NotFound("this exam has no report yet")
    return ReportHistory(
        current_version=versions[0].version, versions=[reg.report_out(exam, r) for r in versions]
    )


@router.post("/{code}/bulk", response_model=BulkOut)
def bulk(code: Code, body: BulkIn, who: Caller, reg: Reg, request: Request) -> BulkOut:
    """Backfill: thousands of patients and exams in one request, a result per record.

    Invalid records are reported and skipped; the valid ones are written.
    """
    access.require(access.may_write_records(who, code))
    result = bulk_intake(reg, code, body, request.app.state.settings.bulk_max_records)
    reg.session.commit()
    _notify_master_index(request)
    return result
