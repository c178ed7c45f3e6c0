"""Record intake and lookup: patients, exams, reports, image arrivals, master index.

Writes are idempotent on natural keys (institution + MRN, institution + exam no.): the
same record twice changes nothing (a content hash decides). Every call runs in the
caller's transaction; nothing is half-written when one raises.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidRecord, NotFound
from ..models import Exam, ImageStudy, Institution, Patient, Person, PlatformRequest, Report
from ..schemas import (
    ArrivalResult,
    ExamIn,
    ExamOut,
    PatientIn,
    PatientOut,
    PersonExam,
    PersonSearch,
    ReportIn,
    ReportOut,
    StudyArrival,
    UnmatchedStudy,
)
from ..security.pii import PiiCipher, name_digests
from . import national_id, ownership
from .lifecycle import TIME_COLUMN, next_state
from .links import study_links

NAME_INDEX_DELETE = "DELETE FROM patient_name_index WHERE patient_id = :patient"
NAME_INDEX_INSERT = (
    "INSERT INTO patient_name_index (patient_id, kind, digest) VALUES (:patient, :kind, :digest)"
    " ON CONFLICT (patient_id, kind) DO UPDATE SET digest = excluded.digest"
)
NAME_INDEX_MISSING = """
SELECT p.id, p.name_enc, p.birth_date FROM patients p
WHERE p.id > :after AND p.birth_date IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM patient_name_index n WHERE n.patient_id = p.id)
ORDER BY p.id LIMIT :limit
"""


def content_hash(model: Any) -> bytes:
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def mask(value: str | None, keep_start: int, keep_end: int) -> str | None:
    if not value:
        return None
    hidden = max(len(value) - keep_start - keep_end, 0)
    return value[:keep_start] + "*" * hidden + value[len(value) - keep_end :]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Registry:
    session: Session
    pii: PiiCipher
    gateway_url: str

    # -- institutions -------------------------------------------------------------------
    def put_institution(self, code: str, name: str) -> str:
        existing = self.session.get(Institution, code)
        if existing is None:
            self.session.add(Institution(institution_code=code, name=name))
            return "created"
        if existing.name == name:
            return "unchanged"
        existing.name = name
        return "updated"

    def _institution(self, code: str) -> Institution:
        institution = self.session.get(Institution, code)
        if institution is None:
            raise NotFound(f"institution {code} is not registered on the platform")
        return institution

    # -- patients -----------------------------------------------------------------------
    def _person(self, number: str) -> uuid.UUID:
        digest = self.pii.blind_index(number, "national_id")
        self.session.execute(
            insert(Person)
            .values(
                person_id=uuid.uuid4(),
                national_id_hmac=digest,
                national_id_enc=self.pii.encrypt(number, "persons.national_id"),
                sex=national_id.sex(number),
                birth_date=national_id.birth_date(number),
            )
            .on_conflict_do_nothing(index_elements=["national_id_hmac"])
        )
        return self.session.execute(
            select(Person.person_id).where(Person.national_id_hmac == digest)
        ).scalar_one()

    def put_patient(self, code: str, mrn: str, record: PatientIn) -> str:
        self._institution(code)
        digest = content_hash(record)
        patient = self.session.execute(
            select(Patient)
            .where(Patient.institution_code == code, Patient.mrn == mrn)
            .with_for_update()
        ).scalar_one_or_none()
        if patient is not None and patient.content_hash == digest:
            return "unchanged"
        outcome = "updated" if patient is not None else "created"
        person_id = self._person(record.national_id) if record.national_id else None
        if patient is None:
            patient = Patient(institution_code=code, mrn=mrn)
            self.session.add(patient)
        patient.person_id = person_id
        patient.name_enc = self.pii.encrypt(record.name, "patients.name")
        patient.phone_enc = (
            self.pii.encrypt(record.phone, "patients.phone") if record.phone else None
        )
        patient.phone_hmac = self.pii.blind_index(record.phone, "phone") if record.phone else None
        patient.sex = record.sex
        patient.birth_date = record.birth_date or (
            national_id.birth_date(record.national_id) if record.national_id else None
        )
        patient.age = record.age
        patient.chief_complaint = record.chief_complaint
        patient.content_hash = digest
        patient.updated_at = _now()
        self.session.flush()
        self._index_name(patient.id, record.name, patient.birth_date)
        # the person may be known now: exams of this patient join the master index
        self.session.execute(
            update(Exam).where(Exam.patient_id == patient.id).values(person_id=patient.person_id)
        )
        if patient.person_id is not None:
            self._request_master_index(
                select(Exam.id).where(Exam.patient_id == patient.id, Exam.master_index_id.is_(None))
            )
        return outcome

    def _index_name(self, patient_id: int, name: str, birth_date: dt.date | None) -> None:
        """The patient's name blind index (lookup by 汉字 name and birth date), replaced."""
        self.session.execute(text(NAME_INDEX_DELETE), {"patient": patient_id})
        digests = name_digests(self.pii, name, birth_date) if birth_date else {}
        for kind, value in digests.items():
            self.session.execute(
                text(NAME_INDEX_INSERT), {"patient": patient_id, "kind": kind, "digest": value}
            )

    def index_missing_names(self, after_id: int = 0, batch: int = 500) -> int | None:
        """Index the names of patients registered before the name index, one batch of
        patient ids above `after_id`; answers the last id to continue from (None: done).
        Each name is decrypted in memory only, never written in clear."""
        rows = self.session.execute(
            text(NAME_INDEX_MISSING), {"after": after_id, "limit": batch}
        ).all()
        for patient_id, name_enc, birth_date in rows:
            self._index_name(patient_id, self.pii.decrypt(name_enc, "patients.name"), birth_date)
        return int(rows[-1][0]) if rows else None

    def get_patient(self, code: str, mrn: str) -> PatientOut:
        patient = self.session.execute(
            select(Patient).where(Patient.institution_code == code, Patient.mrn == mrn)
        ).scalar_one_or_none()
        if patient is None:
            raise NotFound("no such patient at this institution")
        number = None
        if patient.person_id is not None:
            person = self.session.get(Person, patient.person_id)
            assert person is not None
            number = self.pii.decrypt(person.national_id_enc, "persons.national_id")
        phone = self.pii.decrypt(patient.phone_enc, "patients.phone") if patient.phone_enc else None
        return PatientOut(
            institution_code=code,
            mrn=mrn,
            name=self.pii.decrypt(patient.name_enc, "patients.name"),
            national_id_masked=national_id.mask(number),
            phone_masked=mask(phone, 3, 4),
            sex=patient.sex,
            birth_date=patient.birth_date,
            age=patient.age,
            chief_complaint=patient.chief_complaint,
            updated_at=patient.updated_at,
        )

    # -- exams --------------------------------------------------------------------------
    def _request_master_index(self, exam_ids: Any) -> None:
        self.session.execute(
            insert(PlatformRequest)
            .from_select(["exam_id"], exam_ids)
            .on_conflict_do_nothing(index_elements=["exam_id"])
        )

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
            institution_code=exam.institution_code,
            exam_no=exam.exam_no,
            exam_uid=exam.exam_uid,
            patient_mrn=mrn,
            master_index_id=exam.master_index_id,
            modality=exam.modality,
            body_part=exam.body_part,
            exam_type=exam.exam_type,
            method=exam.method,
            device=exam.device,
            requesting_department=exam.requesting_department,
            exam_datetime=exam.exam_datetime,
            state=exam.state,  # type: ignore[arg-type]
            state_times={state: getattr(exam, column) for state, column in TIME_COLUMN.items()},
            study_instance_uid=exam.study_instance_uid,
            series_count=exam.series_count,
            instance_count=exam.instance_count,
            links=study_links(self.gateway_url, exam.study_instance_uid),
        )

    def _advance(self, exam: Exam, event: str) -> None:
        state = next_state(exam.state, event)
        if state != exam.state:
            exam.state = state
            setattr(exam, TIME_COLUMN[state], _now())

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
            institution_code=exam.institution_code,
            exam_no=exam.exam_no,
            version=report.version,
            findings=report.findings,
            impression=report.impression,
            author=report.author,
            reviewer=report.reviewer,
            approved_at=report.approved_at,
            created_at=report.created_at,
        )

    def report_history(self, exam: Exam) -> list[Report]:
        return list(
            self.session.execute(
                select(Report).where(Report.exam_id == exam.id).order_by(Report.version.desc())
            ).scalars()
        )

    # -- images meet their exam ---------------------------------------------------------
    def _link(self, exam: Exam, study: ImageStudy) -> None:
        study.exam_id = exam.id
        exam.study_instance_uid = study.study_instance_uid
        exam.series_count = study.series_count
        exam.instance_count = study.instance_count
        self._advance(exam, "images-complete" if study.complete else "images-arriving")
        exam.updated_at = _now()

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
        return [
            UnmatchedStudy(
                study_instance_uid=s.study_instance_uid,
                institution_code=s.institution_code,
                accession_number=s.accession_number,
                modalities=s.modalities,
                instance_count=s.instance_count,
                first_seen=s.first_seen,
            )
            for s in rows
        ]

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

    # -- lookups ------------------------------------------------------------------------
    def by_master_index(self, master_index_id: str) -> Exam:
        exam = self.session.execute(
            select(Exam).where(Exam.master_index_id == master_index_id)
        ).scalar_one_or_none()
        if exam is None:
            raise NotFound("no exam with this master index ID")
        return exam

    def person_exams(self, search: PersonSearch) -> list[PersonExam]:
        if search.national_id is None:  # by name: lookup_sql.person_exams
            raise InvalidRecord("national_id", "this lookup needs the national ID no.")
        digest = self.pii.blind_index(search.national_id, "national_id")
        has_report = exists().where(Report.exam_id == Exam.id)
        query = (
            select(
                Exam.master_index_id,
                Exam.institution_code,
                Institution.name,
                Exam.exam_no,
                Exam.modality,
                Exam.body_part,
                Exam.exam_datetime,
                Exam.state,
                Exam.study_instance_uid,
                has_report.label("has_report"),
            )
            .join(Person, Person.person_id == Exam.person_id)
            .join(Institution, Institution.institution_code == Exam.institution_code)
            .where(Person.national_id_hmac == digest)
        )
        conditions: list[ColumnElement[bool]] = []
        if search.modalities:
            conditions.append(Exam.modality.in_(search.modalities))
        if search.body_part:
            conditions.append(func.upper(Exam.body_part) == search.body_part.upper())
        if search.date_from:
            conditions.append(
                Exam.exam_datetime >= dt.datetime.combine(search.date_from, dt.time(), dt.UTC)
            )
        if search.date_to:
            end = dt.datetime.combine(search.date_to + dt.timedelta(days=1), dt.time(), dt.UTC)
            conditions.append(Exam.exam_datetime < end)
        if conditions:
            query = query.where(and_(*conditions))
        rows = self.session.execute(
            query.order_by(Exam.exam_datetime.desc()).limit(search.limit)
        ).all()
        return [
            PersonExam(
                master_index_id=r.master_index_id,
                institution_code=r.institution_code,
                institution_name=r.name,
                exam_no=r.exam_no,
                modality=r.modality,
                body_part=r.body_part,
                exam_datetime=r.exam_datetime,
                state=r.state,
                study_instance_uid=r.study_instance_uid,
                has_report=r.has_report,
                links=study_links(self.gateway_url, r.study_instance_uid),
            )
            for r in rows
        ]
