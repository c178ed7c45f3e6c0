"""A sample study's registration records as the indexer's API takes them (HIS/RIS side)."""

from __future__ import annotations

from typing import Any

from .studies import SampleStudy


def patient_record(study: SampleStudy) -> dict[str, Any]:
    p = study.patient
    return {
        "name": p.name_hanzi,
        "national_id": p.national_id,
        "phone": p.phone,
        "sex": p.sex,
        "birth_date": p.birth_date.isoformat(),
        "age": p.age_on(study.exam.exam_datetime.date()),
        "chief_complaint": p.chief_complaint,
    }


def exam_record(study: SampleStudy, with_study_uid: bool = False) -> dict[str, Any]:
    e = study.exam
    record = {
        "patient_mrn": study.patient.mrn,
        "exam_uid": e.exam_uid,
        "modality": e.modality,
        "body_part": e.body_part,
        "exam_type": e.exam_type,
        "method": e.method,
        "device": e.device,
        "requesting_department": e.requesting_department,
        "exam_datetime": e.exam_datetime.isoformat(),
    }
    if with_study_uid:
        record["study_instance_uid"] = e.study_instance_uid
    return record


def report_record(study: SampleStudy) -> dict[str, Any]:
    r = study.report
    return {
        "findings": r.findings,
        "impression": r.impression,
        "author": r.author,
        "reviewer": r.reviewer,
        "approved_at": r.approved_at.isoformat(),
        "exam_uid": study.exam.exam_uid,
        "patient_mrn": study.patient.mrn,
    }
