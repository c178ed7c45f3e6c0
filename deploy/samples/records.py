"""A sample study's registration records as the indexer's API takes them (HIS/RIS side)."""

from __future__ import annotations

from typing import Any

from .studies import SampleStudy


def _fields(source: object, *names: str) -> dict[str, Any]:
    """The named attributes, under their own names (the contract's field names)."""
    return {name: getattr(source, name) for name in names}


def patient_record(study: SampleStudy) -> dict[str, Any]:
    p = study.patient
    return {
        **_fields(p, "national_id", "phone", "sex", "chief_complaint"),
        "name": p.name_hanzi,
        "birth_date": p.birth_date.isoformat(),
        "age": p.age_on(study.exam.exam_datetime.date()),
    }


def exam_record(study: SampleStudy, with_study_uid: bool = False) -> dict[str, Any]:
    e = study.exam
    record = {
        **_fields(e, "exam_uid", "modality", "body_part", "exam_type", "method", "device"),
        "requesting_department": e.requesting_department,
        "patient_mrn": study.patient.mrn,
        "exam_datetime": e.exam_datetime.isoformat(),
    }
    if with_study_uid:
        record["study_instance_uid"] = e.study_instance_uid
    return record


def report_record(study: SampleStudy) -> dict[str, Any]:
    r = study.report
    return {
        **_fields(r, "findings", "impression", "author", "reviewer"),
        "approved_at": r.approved_at.isoformat(),
        "exam_uid": study.exam.exam_uid,
        "patient_mrn": study.patient.mrn,
    }
