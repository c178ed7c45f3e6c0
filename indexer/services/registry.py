"""Record intake and lookup: patients, exams, reports, image arrivals, master index.

Writes are idempotent on natural keys (institution + MRN, institution + exam no.): the
same record twice changes nothing (a content hash decides). Every call runs in the
caller's transaction; nothing is half-written when one raises. `Registry` is the whole of
it: institutions and patients (patients.py), exams and reports (exams.py), and here the
image arrivals that meet their exam.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from ..errors import Conflict, NotFound
from ..models import Exam, ImageStudy
from ..schemas import ArrivalResult, StudyArrival, UnmatchedStudy
from . import ownership
from .exams import ExamRecords, fields_of
from .patients import _now, content_hash, mask

__all__ = ["Registry", "content_hash", "mask"]


@dataclass
class Registry(ExamRecords):
    # -- images meet their exam ---------------------------------------------------------
    def record_arrival(self, code: str, arrival: StudyArrival) -> ArrivalResult:
        self._institution(code)
        study = self.session.get(ImageStudy, arrival.study_instance_uid, with_for_update=True)
        if study is None:
            study = ImageStudy(study_instance_uid=arrival.study_instance_uid, institution_code=code)
            self.session.add(study)
        elif study.institution_code != code:
            raise Conflict("this study is recorded for another institution")
        study.accession_number = arrival.accession_number or study.accession_number
        study.modalities = "\\".join(arrival.modalities) or study.modalities
        study.series_count = arrival.series_count
        study.instance_count = arrival.instance_count
        study.complete = study.complete or arrival.complete
        study.last_seen = _now()
        exam = None
        if study.exam_id is not None:
            exam = self.session.get(Exam, study.exam_id, with_for_update=True)
        elif study.accession_number:
            exam = self.session.execute(
                select(Exam)
                .where(Exam.institution_code == code, Exam.exam_no == study.accession_number)
                .with_for_update()
            ).scalar_one_or_none()
        self.session.flush()
        if exam is None or (study.exam_id is None and not ownership.may_relink(exam, study)):
            return ArrivalResult(linked_exam_no=None, reconciliation=True)
        self._link(exam, study)
        return ArrivalResult(linked_exam_no=exam.exam_no, reconciliation=False)

    def unmatched(self, code: str | None, limit: int = 200) -> list[UnmatchedStudy]:
        query = select(ImageStudy).where(ImageStudy.exam_id.is_(None))
        if code:
            query = query.where(ImageStudy.institution_code == code)
        rows = self.session.execute(query.order_by(ImageStudy.first_seen).limit(limit)).scalars()
        return [UnmatchedStudy(**fields_of(s, UnmatchedStudy)) for s in rows]

    def resolve(self, study_uid: str, exam_no: str) -> Exam:
        study = self.session.get(ImageStudy, study_uid, with_for_update=True)
        if study is None:
            raise NotFound("no such study on the reconciliation list")
        if study.exam_id is not None:
            raise Conflict("this study is already linked to an exam")
        exam = self.get_exam(study.institution_code, exam_no)
        self._link(exam, study)
        return exam

    def study_institution(self, study_instance_uid: str) -> str | None:
        """The institution a study belongs to, from arrivals or exams (None: unknown)."""
        found = self.session.get(ImageStudy, study_instance_uid)
        if found is not None:
            return found.institution_code
        return self.session.execute(
            select(Exam.institution_code).where(Exam.study_instance_uid == study_instance_uid)
        ).scalar()
