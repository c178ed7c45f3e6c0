"""What the REST intake has no service for, and HL7 asks: an A40 merge of two MRNs of one
institution, and the cancellation (ORC-1 CA) of an exam ordered by mistake. Both run in
the caller's transaction, on the Registry's session, with the rows locked.

- merge: the prior patient's exams move to the surviving patient (and to its person, so
  that they join that person's master index), then the prior registration is removed and
  the merge recorded (hl7_merges). The same merge again changes nothing.
- cancel: only an exam that nothing else has reached yet (state "registered": no images
  linked, no report) is removed, with its queued master-index request. An exam with images
  or a report is not cancelled by a RIS message: that is refused (AE) and an operator
  decides. A master index ID already issued for it stays issued at the platform and
  resolves to nothing here.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from ..models import Exam, ImageStudy, Patient, PlatformRequest, Report
from ..models.hl7 import Hl7Merge
from ..services.registry import Registry
from .errors import APPLICATION_ERROR, DUPLICATE_KEY, Hl7Error, SequenceProblem


def _patient(reg: Registry, code: str, mrn: str) -> Patient | None:
    return reg.session.execute(
        select(Patient)
        .where(Patient.institution_code == code, Patient.mrn == mrn)
        .with_for_update()
    ).scalar_one_or_none()


def merge(reg: Registry, code: str, prior_mrn: str, surviving_mrn: str, control_id: str) -> str:
    """Merge `prior_mrn` into `surviving_mrn` (both of `code`): "updated" or "unchanged"."""
    if prior_mrn == surviving_mrn:
        raise Hl7Error("MRG^1^1", DUPLICATE_KEY, "MRG-1: the prior MRN is the surviving one")
    survivor = _patient(reg, code, surviving_mrn)
    if survivor is None:
        raise SequenceProblem("PID^1^3", "the surviving MRN is not registered here")
    prior = _patient(reg, code, prior_mrn)
    if prior is None:
        done = reg.session.execute(
            select(Hl7Merge.id).where(
                Hl7Merge.institution_code == code,
                Hl7Merge.prior_mrn == prior_mrn,
                Hl7Merge.surviving_mrn == surviving_mrn,
            )
        ).first()
        if done is not None:
            return "unchanged"
        raise SequenceProblem("MRG^1^1", "the prior MRN is not registered here")
    moved = reg.session.execute(
        update(Exam)
        .where(Exam.patient_id == prior.id)
        .values(patient_id=survivor.id, person_id=survivor.person_id, updated_at=func.now())
        .returning(Exam.id)
    ).all()
    if survivor.person_id is not None:
        reg._request_master_index(
            select(Exam.id).where(Exam.patient_id == survivor.id, Exam.master_index_id.is_(None))
        )
    reg.session.delete(prior)  # its name index rows go with it (ON DELETE CASCADE)
    reg.session.add(
        Hl7Merge(
            institution_code=code,
            prior_mrn=prior_mrn,
            surviving_mrn=surviving_mrn,
            exams_moved=len(moved),
            control_id=control_id,
        )
    )
    reg.session.flush()
    return "updated"


def cancel(reg: Registry, code: str, exam_no: str, where: str) -> str:
    """Remove an exam that is only registered; "updated" (removed)."""
    exam = reg.session.execute(
        select(Exam).where(Exam.institution_code == code, Exam.exam_no == exam_no).with_for_update()
    ).scalar_one_or_none()
    if exam is None:
        raise SequenceProblem(where, "no exam with this exam no. to cancel")
    reached = (
        reg.session.execute(
            select(func.count()).select_from(ImageStudy).where(ImageStudy.exam_id == exam.id)
        ).scalar_one()
        + reg.session.execute(
            select(func.count()).select_from(Report).where(Report.exam_id == exam.id)
        ).scalar_one()
    )
    if exam.state != "registered" or reached:
        raise Hl7Error(
            where, APPLICATION_ERROR,
            "the exam has images or a report: it is not cancelled (an operator decides)",
        )  # fmt: skip
    try:
        with reg.session.begin_nested():
            reg.session.execute(delete(PlatformRequest).where(PlatformRequest.exam_id == exam.id))
            reg.session.delete(exam)
            reg.session.flush()
    except IntegrityError:  # another record refers to it (a 互认 decision, say)
        raise Hl7Error(
            where, APPLICATION_ERROR, "other records refer to the exam: it is not cancelled"
        ) from None
    return "updated"
