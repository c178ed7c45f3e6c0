"""Bulk intake for backfills: thousands of patients and exams per request, set-based.

Each record is validated on its own; invalid ones get their errors in the answer and are
skipped, the valid ones are written with a few multi-row statements (idempotent upserts:
a record identical to what is stored is `unchanged`). All in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Label, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert

from ..errors import InvalidRecord
from ..models import Exam, ImageStudy, Patient, Person, PlatformRequest
from ..schemas import BulkExam, BulkIn, BulkItemResult, BulkOut, BulkPatient, ExamIn, PatientIn
from . import national_id
from .registry import Registry, content_hash

CHUNK = 1000
# PostgreSQL: a row an upsert inserted (rather than updated) has no deleting transaction.
INSERTED: Label[bool] = literal_column("(xmax = 0)").label("inserted")


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "record", "msg": e["msg"]}
        for e in exc.errors()
    ]


def _key(raw: dict[str, Any], field: str) -> str | None:
    value = raw.get(field)
    return value if isinstance(value, str) else None


def bulk_intake(reg: Registry, code: str, body: BulkIn, max_records: int) -> BulkOut:
    if len(body.patients) + len(body.exams) > max_records:
        raise InvalidRecord("body", f"at most {max_records} records per request")
    reg._institution(code)
    results: list[BulkItemResult] = []
    patients: list[tuple[int, BulkPatient]] = []
    for raw in body.patients:
        try:
            patients.append((len(results), BulkPatient.model_validate(raw)))
            results.append(
                BulkItemResult(kind="patient", key=_key(raw, "mrn"), outcome="unchanged")
            )
        except ValidationError as exc:
            results.append(
                BulkItemResult(
                    kind="patient", key=_key(raw, "mrn"), outcome="error", errors=_errors(exc)
                )
            )
    exams: list[tuple[int, BulkExam]] = []
    for raw in body.exams:
        try:
            exams.append((len(results), BulkExam.model_validate(raw)))
            results.append(
                BulkItemResult(kind="exam", key=_key(raw, "exam_no"), outcome="unchanged")
            )
        except ValidationError as exc:
            results.append(
                BulkItemResult(
                    kind="exam", key=_key(raw, "exam_no"), outcome="error", errors=_errors(exc)
                )
            )
    for start in range(0, len(patients), CHUNK):
        _patients(reg, code, patients[start : start + CHUNK], results)
    for start in range(0, len(exams), CHUNK):
        _exams(reg, code, exams[start : start + CHUNK], results)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return BulkOut(results=results, counts=counts)


def _fail(results: list[BulkItemResult], index: int, field: str, msg: str) -> None:
    results[index].outcome = "error"
    results[index].errors = [{"field": field, "msg": msg}]


def _patients(
    reg: Registry, code: str, batch: list[tuple[int, BulkPatient]], results: list[BulkItemResult]
) -> None:
    session, pii = reg.session, reg.pii
    seen: set[str] = set()
    rows = []
    for index, p in batch:
        if p.mrn in seen:
            _fail(results, index, "mrn", "appears twice in this request")
            continue
        seen.add(p.mrn)
        rows.append((index, p))
    numbers = {p.national_id for _, p in rows if p.national_id}
    if numbers:
        session.execute(
            insert(Person)
            .values(
                [
                    {
                        "national_id_hmac": pii.blind_index(n, "national_id"),
                        "national_id_enc": pii.encrypt(n, "persons.national_id"),
                        "sex": national_id.sex(n),
                        "birth_date": national_id.birth_date(n),
                    }
                    for n in numbers
                ]
            )
            .on_conflict_do_nothing(index_elements=["national_id_hmac"])
        )
    digests = {pii.blind_index(n, "national_id"): n for n in numbers}
    person_of = {
        digests[h]: pid
        for pid, h in session.execute(
            select(Person.person_id, Person.national_id_hmac).where(
                Person.national_id_hmac.in_(list(digests))
            )
        ).all()
    }
    if not rows:
        return
    now = dt.datetime.now(dt.UTC)
    values = []
    for _, p in rows:
        values.append(
            {
                "institution_code": code,
                "mrn": p.mrn,
                "person_id": person_of.get(p.national_id) if p.national_id else None,
                "name_enc": pii.encrypt(p.name, "patients.name"),
                "phone_enc": pii.encrypt(p.phone, "patients.phone") if p.phone else None,
                "phone_hmac": pii.blind_index(p.phone, "phone") if p.phone else None,
                "sex": p.sex,
                "birth_date": p.birth_date
                or (national_id.birth_date(p.national_id) if p.national_id else None),
                "age": p.age,
                "chief_complaint": p.chief_complaint,
                # hashed as the single-record PUT hashes it: the same record is "unchanged"
                "content_hash": content_hash(PatientIn(**p.model_dump(exclude={"mrn"}))),
                "updated_at": now,
            }
        )
    statement = insert(Patient).values(values)
    upsert = statement.on_conflict_do_update(
        index_elements=["institution_code", "mrn"],
        set_={
            c: statement.excluded[c]
            for c in (
                "person_id",
                "name_enc",
                "phone_enc",
                "phone_hmac",
                "sex",
                "birth_date",
                "age",
                "chief_complaint",
                "content_hash",
                "updated_at",
            )
        },
        where=Patient.content_hash != statement.excluded.content_hash,
    ).returning(Patient.mrn, Patient.id, INSERTED)
    written = {row.mrn: row for row in session.execute(upsert)}
    changed_ids = []
    for index, p in rows:
        row = written.get(p.mrn)
        if row is None:
            continue  # identical to what is stored
        results[index].outcome = "created" if row.inserted else "updated"
        if not row.inserted:
            changed_ids.append(row.id)
    if changed_ids:
        session.execute(
            update(Exam)
            .where(Exam.patient_id == Patient.id, Patient.id.in_(changed_ids))
            .values(person_id=Patient.person_id)
        )


def _exams(
    reg: Registry, code: str, batch: list[tuple[int, BulkExam]], results: list[BulkItemResult]
) -> None:
    session = reg.session
    mrns = {e.patient_mrn for _, e in batch}
    patient_of = {
        r.mrn: r
        for r in session.execute(
            select(Patient.mrn, Patient.id, Patient.person_id).where(
                Patient.institution_code == code, Patient.mrn.in_(list(mrns))
            )
        ).all()
    }
    uids = [e.exam_uid for _, e in batch]
    taken = {
        r.exam_uid: (r.institution_code, r.exam_no)
        for r in session.execute(
            select(Exam.exam_uid, Exam.institution_code, Exam.exam_no).where(
                Exam.exam_uid.in_(uids)
            )
        ).all()
    }
    existing = {
        r.exam_no: r.exam_uid
        for r in session.execute(
            select(Exam.exam_no, Exam.exam_uid).where(
                Exam.institution_code == code, Exam.exam_no.in_([e.exam_no for _, e in batch])
            )
        ).all()
    }
    now = dt.datetime.now(dt.UTC)
    seen_no: set[str] = set()
    seen_uid: set[Any] = set()
    rows = []
    for index, e in batch:
        patient = patient_of.get(e.patient_mrn)
        if patient is None:
            _fail(results, index, "patient_mrn", "no such patient at this institution")
        elif e.exam_no in seen_no or e.exam_uid in seen_uid:
            _fail(results, index, "exam_no", "this exam appears twice in this request")
        elif e.exam_no in existing and existing[e.exam_no] != e.exam_uid:
            _fail(results, index, "exam_uid", "this exam no. is registered with another exam_uid")
        elif e.exam_uid in taken and taken[e.exam_uid] != (code, e.exam_no):
            _fail(results, index, "exam_uid", "this exam_uid belongs to another exam")
        else:
            seen_no.add(e.exam_no)
            seen_uid.add(e.exam_uid)
            rows.append((index, e, patient))
    if not rows:
        return
    values = []
    for _, e, patient in rows:
        values.append(
            {
                "institution_code": code,
                "exam_no": e.exam_no,
                "exam_uid": e.exam_uid,
                "patient_id": patient.id,
                "person_id": patient.person_id,
                "modality": e.modality,
                "body_part": e.body_part,
                "exam_type": e.exam_type,
                "method": e.method,
                "device": e.device,
                "requesting_department": e.requesting_department,
                "exam_datetime": e.exam_datetime,
                "study_instance_uid": e.study_instance_uid,
                "state": "registered",
                "content_hash": content_hash(ExamIn(**e.model_dump(exclude={"exam_no"}))),
                "updated_at": now,
            }
        )
    statement = insert(Exam).values(values)
    upsert = statement.on_conflict_do_update(
        index_elements=["institution_code", "exam_no"],
        set_={
            c: statement.excluded[c]
            for c in (
                "patient_id",
                "person_id",
                "modality",
                "body_part",
                "exam_type",
                "method",
                "device",
                "requesting_department",
                "exam_datetime",
                "content_hash",
                "updated_at",
            )
        },
        where=Exam.content_hash != statement.excluded.content_hash,
    ).returning(Exam.exam_no, Exam.id)
    written = {row.exam_no: row.id for row in session.execute(upsert)}
    for index, e, _ in rows:
        if e.exam_no in written:
            results[index].outcome = "updated" if e.exam_no in existing else "created"
    if written:
        session.execute(
            insert(PlatformRequest)
            .from_select(
                ["exam_id"],
                select(Exam.id).where(
                    Exam.id.in_(list(written.values())),
                    Exam.person_id.is_not(None),
                    Exam.master_index_id.is_(None),
                ),
            )
            .on_conflict_do_nothing(index_elements=["exam_id"])
        )
        waiting = session.execute(
            select(ImageStudy).where(
                ImageStudy.institution_code == code,
                ImageStudy.exam_id.is_(None),
                ImageStudy.accession_number.in_(list(written)),
            )
        ).scalars()
        for study in waiting:
            exam = session.get(Exam, written[study.accession_number])
            if exam is not None:
                reg._link(exam, study)
