"""Exams and their reports, the second part of the registry (see registry.py): writes are
idempotent on institution + exam no.; an exam moves through its states (lifecycle.py) as
its images and reports arrive."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from ..errors import Conflict, InvalidRecord, NotFound
from ..models import Exam, ImageStudy, Patient, Report
from ..schemas import ExamIn, ExamOut, ReportIn, ReportOut
from . import ownership
from .lifecycle import TIME_COLUMN, next_state
from .links import study_links
from .patients import PatientRecords, _now, content_hash


def fields_of(row: object, model: type[BaseModel], *elsewhere: str) -> dict[str, Any]:
    """The model's fields read from the row's attributes of the same names, but those the
    caller computes (`elsewhere`)."""
    return {name: getattr(row, name) for name in model.model_fields if name not in elsewhere}


class ExamRecords(PatientRecords):
    # -- exams --------------------------------------------------------------------------
    def put_exam(self, code: str, exam_no: str, record: ExamIn) -> tuple[str, Exam]:
        self._institution(code)
        patient = self.session.execute(
            select(Patient).where(
                Patient.institution_code == code, Patient.mrn == record.patient_mrn
            )
        ).scalar_one_or_none()
        if patient is None:
            raise InvalidRecord(
                "patient_mrn", "no such patient at this institution: register the patient first"
            )
        digest = content_hash(record)
        exam = self.session.execute(
            select(Exam)
            .where(Exam.institution_code == code, Exam.exam_no == exam_no)
            .with_for_update()
        ).scalar_one_or_none()
        if exam is not None and exam.exam_uid != record.exam_uid:
            raise Conflict("this exam no. is registered with another exam_uid")
        if exam is not None and exam.content_hash == digest:
            return "unchanged", exam
        other = self.session.execute(
            select(Exam.id).where(Exam.exam_uid == record.exam_uid)
        ).scalar_one_or_none()
        if other is not None and (exam is None or other != exam.id):
            raise Conflict("this exam_uid belongs to another exam")
        ownership.refuse_foreign_study(self.session, code, record.study_instance_uid)
        outcome = "updated" if exam is not None else "created"
        if exam is None:
            exam = Exam(institution_code=code, exam_no=exam_no, state="registered")
            self.session.add(exam)
        exam.exam_uid = record.exam_uid
        exam.patient_id = patient.id
        exam.person_id = patient.person_id
        for field in (
            "modality", "body_part", "exam_type", "method", "device",
            "requesting_department", "exam_datetime",
        ):  # fmt: skip
            setattr(exam, field, getattr(record, field))
        if record.study_instance_uid:
            exam.study_instance_uid = record.study_instance_uid
        exam.content_hash = digest
        exam.updated_at = _now()
        self.session.flush()
        if exam.person_id is not None and exam.master_index_id is None:
            self._request_master_index(select(Exam.id).where(Exam.id == exam.id))
        # images that came first wait on the reconciliation list: link them now
        waiting = self.session.execute(
            select(ImageStudy).where(
                ImageStudy.institution_code == code,
                ImageStudy.accession_number == exam_no,
                ImageStudy.exam_id.is_(None),
            )
        ).scalars()
        for study in waiting:
            if ownership.may_relink(exam, study):
                self._link(exam, study)
        return outcome, exam

    def get_exam(self, code: str, exam_no: str) -> Exam:
        exam = self.session.execute(
            select(Exam).where(Exam.institution_code == code, Exam.exam_no == exam_no)
        ).scalar_one_or_none()
        if exam is None:
            raise NotFound("no such exam at this institution")
        return exam

    def exam_out(self, exam: Exam) -> ExamOut:
        mrn = self.session.execute(
            select(Patient.mrn).where(Patient.id == exam.patient_id)
        ).scalar_one()
        return ExamOut(
            **fields_of(exam, ExamOut, "patient_mrn", "state_times", "links"),
            patient_mrn=mrn,
            state_times={state: getattr(exam, column) for state, column in TIME_COLUMN.items()},
            links=study_links(self.gateway_url, exam.study_instance_uid),
        )

    def _advance(self, exam: Exam, event: str) -> None:
        state = next_state(exam.state, event)
        if state != exam.state:
            exam.state = state
            setattr(exam, TIME_COLUMN[state], _now())

    def _link(self, exam: Exam, study: ImageStudy) -> None:
        study.exam_id = exam.id
        exam.study_instance_uid = study.study_instance_uid
        exam.series_count = study.series_count
        exam.instance_count = study.instance_count
        self._advance(exam, "images-complete" if study.complete else "images-arriving")
        exam.updated_at = _now()

    # -- reports ------------------------------------------------------------------------
    def current_report(self, exam: Exam) -> Report | None:
        return self.session.execute(
            select(Report).where(Report.exam_id == exam.id).order_by(Report.version.desc()).limit(1)
        ).scalar_one_or_none()

    def put_report(self, code: str, exam_no: str, record: ReportIn) -> tuple[str, Report]:
        exam = self.session.execute(
            select(Exam)
            .where(Exam.institution_code == code, Exam.exam_no == exam_no)
            .with_for_update()
        ).scalar_one_or_none()
        if exam is None:
            raise NotFound("no exam with this exam no. at this institution: register it first")
        if record.exam_uid is not None and record.exam_uid != exam.exam_uid:
            raise Conflict("exam_uid does not match the exam registered under this exam no.")
        if record.patient_mrn is not None:
            mrn = self.session.execute(
                select(Patient.mrn).where(Patient.id == exam.patient_id)
            ).scalar_one()
            if mrn != record.patient_mrn:
                raise Conflict("patient_mrn does not match the exam's patient")
        current = self.current_report(exam)
        fields = ("findings", "impression", "author", "reviewer", "approved_at")
        if current is not None and all(getattr(current, f) == getattr(record, f) for f in fields):
            return "unchanged", current
        current_version = current.version if current is not None else 0
        if record.base_version is not None and record.base_version != current_version:
            raise Conflict(
                f"stale revision: it replaces version {record.base_version}, but the current "
                f"report is version {current_version}"
            )
        report = Report(exam_id=exam.id, version=current_version + 1)
        for f in fields:
            setattr(report, f, getattr(record, f))
        self.session.add(report)
        self._advance(exam, "report" if current is None else "report-revision")
        exam.updated_at = _now()
        self.session.flush()
        return ("created" if current is None else "updated"), report

    def report_out(self, exam: Exam, report: Report) -> ReportOut:
        return ReportOut(
            **fields_of(report, ReportOut, "institution_code", "exam_no"),
            institution_code=exam.institution_code,
            exam_no=exam.exam_no,
        )

    def report_history(self, exam: Exam) -> list[Report]:
        return list(
            self.session.execute(
                select(Report).where(Report.exam_id == exam.id).order_by(Report.version.desc())
            ).scalars()
        )
