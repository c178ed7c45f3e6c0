"""Institutions and patients, the first part of the registry (see registry.py): writes are
idempotent on institution + MRN (a content hash decides); personal data is stored
encrypted, with blind indexes for the national ID, phone and name lookups."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import Exam, Institution, Patient, Person, PlatformRequest
from ..schemas import PatientIn, PatientOut
from ..security.pii import PiiCipher, name_digests
from . import national_id

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
class PatientRecords:
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

    def _request_master_index(self, exam_ids: Any) -> None:
        self.session.execute(
            insert(PlatformRequest)
            .from_select(["exam_id"], exam_ids)
            .on_conflict_do_nothing(index_elements=["exam_id"])
        )

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
