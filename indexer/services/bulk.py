"""Bulk intake for backfills: thousands of patients and exams per request, set-based.

Each record is validated on its own; invalid ones get their errors in the answer and are
skipped, the valid ones are written with a few multi-row statements (idempotent upserts:
a record identical to what is stored is `unchanged`). All in the caller's transaction.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from sqlalchemy import Label, literal_column, select

from ..errors import InvalidRecord
from ..models import Exam, ImageStudy
from ..schemas import BulkExam, BulkIn, BulkItemResult, BulkOut, BulkPatient, ExamIn, PatientIn
from ..security.pii import name_digests
from . import national_id, ownership
from .registry import Registry, content_hash

CHUNK = 1000
M = TypeVar("M", BulkPatient, BulkExam)
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


def _validated(
    raws: list[dict[str, Any]],
    model: type[M],
    kind: Literal["patient", "exam"],
    key_field: str,
    results: list[BulkItemResult],
) -> list[tuple[int, M]]:
    """Validate each record on its own; each gets its result slot (errors filled in now)."""
    valid: list[tuple[int, M]] = []
    for raw in raws:
        key = _key(raw, key_field)
        try:
            valid.append((len(results), model.model_validate(raw)))
            results.append(BulkItemResult(kind=kind, key=key, outcome="unchanged"))
        except ValidationError as exc:
            results.append(BulkItemResult(kind=kind, key=key, outcome="error", errors=_errors(exc)))
    return valid


def bulk_intake(reg: Registry, code: str, body: BulkIn, max_records: int) -> BulkOut:
    if len(body.patients) + len(body.exams) > max_records:
        raise InvalidRecord("body", f"at most {max_records} records per request")
    reg._institution(code)
    results: list[BulkItemResult] = []
    patients = _validated(body.patients, BulkPatient, "patient", "mrn", results)
    exams = _validated(body.exams, BulkExam, "exam", "exam_no", results)
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


def _sql(reg: Registry, statement: str, params: dict[str, Any]) -> list[Any]:
    """Run SQL on the session's own connection (same transaction), arrays as parameters:
    one round trip per chunk, no per-row statement building."""
    driver = reg.session.connection().connection.driver_connection
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


PERSONS_SQL = """
INSERT INTO persons (person_id, national_id_hmac, national_id_enc, sex, birth_date)
SELECT gen_random_uuid(), u.* FROM unnest(%(hmac)s::bytea[], %(enc)s::bytea[], %(sex)s::text[],
                                          %(birth)s::date[]) AS u
ON CONFLICT (national_id_hmac) DO NOTHING
"""
PATIENTS_SQL = """
INSERT INTO patients (institution_code, mrn, person_id, name_enc, phone_enc, phone_hmac, sex,
                      birth_date, age, chief_complaint, content_hash, updated_at)
SELECT %(code)s, u.*, now()
FROM unnest(%(mrn)s::text[], %(person)s::uuid[], %(name)s::bytea[], %(phone)s::bytea[],
            %(phone_hmac)s::bytea[], %(sex)s::text[], %(birth)s::date[], %(age)s::int[],
            %(complaint)s::text[], %(hash)s::bytea[]) AS u
ON CONFLICT (institution_code, mrn) DO UPDATE SET
    person_id = excluded.person_id, name_enc = excluded.name_enc,
    phone_enc = excluded.phone_enc, phone_hmac = excluded.phone_hmac, sex = excluded.sex,
    birth_date = excluded.birth_date, age = excluded.age,
    chief_complaint = excluded.chief_complaint, content_hash = excluded.content_hash,
    updated_at = excluded.updated_at
WHERE patients.content_hash <> excluded.content_hash
RETURNING mrn, id, (xmax = 0) AS inserted
"""
EXAMS_SQL = """
INSERT INTO exams (institution_code, exam_no, exam_uid, patient_id, person_id, modality,
                   body_part, exam_type, method, device, requesting_department, exam_datetime,
                   study_instance_uid, content_hash, state, updated_at)
SELECT %(code)s, u.*, 'registered', now()
FROM unnest(%(no)s::text[], %(uid)s::uuid[], %(patient)s::bigint[], %(person)s::uuid[],
            %(modality)s::text[], %(body_part)s::text[], %(exam_type)s::text[],
            %(method)s::text[], %(device)s::text[], %(dept)s::text[],
            %(when)s::timestamptz[], %(study)s::text[], %(hash)s::bytea[]) AS u
ON CONFLICT (institution_code, exam_no) DO UPDATE SET
    patient_id = excluded.patient_id, person_id = excluded.person_id,
    modality = excluded.modality, body_part = excluded.body_part,
    exam_type = excluded.exam_type, method = excluded.method, device = excluded.device,
    requesting_department = excluded.requesting_department,
    exam_datetime = excluded.exam_datetime,
    study_instance_uid = COALESCE(excluded.study_instance_uid, exams.study_instance_uid),
    content_hash = excluded.content_hash, updated_at = excluded.updated_at
WHERE exams.content_hash <> excluded.content_hash
RETURNING exam_no, id
"""
# The name blind index (lookup by name and birth date) of the patients just written.
NAME_INDEX_DELETE = "DELETE FROM patient_name_index WHERE patient_id = ANY(%(ids)s)"
NAME_INDEX_INSERT = """
INSERT INTO patient_name_index (patient_id, kind, digest)
SELECT * FROM unnest(%(patient)s::bigint[], %(kind)s::text[], %(digest)s::bytea[])
"""


def _patients(
    reg: Registry, code: str, batch: list[tuple[int, BulkPatient]], results: list[BulkItemResult]
) -> None:
    pii = reg.pii
    seen: set[str] = set()
    rows = []
    for index, p in batch:
        if p.mrn in seen:
            _fail(results, index, "mrn", "appears twice in this request")
            continue
        seen.add(p.mrn)
        rows.append((index, p))
    if not rows:
        return
    rows.sort(key=lambda item: item[1].mrn)  # one lock order for every writer
    numbers = sorted({p.national_id for _, p in rows if p.national_id})
    digests = [pii.blind_index(n, "national_id") for n in numbers]
    person_of: dict[str, Any] = {}
    if numbers:
        _sql(
            reg,
            PERSONS_SQL,
            {
                "hmac": digests,
                "enc": [pii.encrypt(n, "persons.national_id") for n in numbers],
                "sex": [national_id.sex(n) for n in numbers],
                "birth": [national_id.birth_date(n) for n in numbers],
            },
        )
        number_of = dict(zip(digests, numbers, strict=True))
        for pid, digest in _sql(
            reg,
            "SELECT person_id, national_id_hmac FROM persons WHERE national_id_hmac = ANY(%(h)s)",
            {"h": digests},
        ):
            person_of[number_of[bytes(digest)]] = pid
    columns: dict[str, list[Any]] = {
        k: []
        for k in (
            "mrn", "person", "name", "phone", "phone_hmac", "sex", "birth", "age", "complaint",
            "hash",
        )
    }  # fmt: skip
    for _, p in rows:
        columns["mrn"].append(p.mrn)
        columns["person"].append(person_of.get(p.national_id) if p.national_id else None)
        columns["name"].append(pii.encrypt(p.name, "patients.name"))
        columns["phone"].append(pii.encrypt(p.phone, "patients.phone") if p.phone else None)
        columns["phone_hmac"].append(pii.blind_index(p.phone, "phone") if p.phone else None)
        columns["sex"].append(p.sex)
        columns["birth"].append(
            p.birth_date or (national_id.birth_date(p.national_id) if p.national_id else None)
        )
        columns["age"].append(p.age)
        columns["complaint"].append(p.chief_complaint)
        # hashed as the single-record PUT hashes it: the same record is "unchanged"
        columns["hash"].append(content_hash(PatientIn(**p.model_dump(exclude={"mrn"}))))
    written = {
        mrn: (pid, inserted)
        for mrn, pid, inserted in _sql(reg, PATIENTS_SQL, {"code": code, **columns})
    }
    changed_ids = []
    names: dict[str, list[Any]] = {"ids": [], "patient": [], "kind": [], "digest": []}
    for (index, p), born in zip(rows, columns["birth"], strict=True):
        if p.mrn not in written:
            continue  # identical to what is stored
        pid, inserted = written[p.mrn]
        results[index].outcome = "created" if inserted else "updated"
        if not inserted:
            changed_ids.append(pid)
        names["ids"].append(pid)
        for kind, digest in (name_digests(pii, p.name, born) if born else {}).items():
            names["patient"].append(pid)
            names["kind"].append(kind)
            names["digest"].append(digest)
    if names["ids"]:
        _sql(reg, NAME_INDEX_DELETE, {"ids": names.pop("ids")})
        _sql(reg, NAME_INDEX_INSERT, names)
    if changed_ids:
        _sql(
            reg,
            "UPDATE exams e SET person_id = p.person_id FROM patients p "
            "WHERE e.patient_id = p.id AND p.id = ANY(%(ids)s)",
            {"ids": changed_ids},
        )


def _exams(
    reg: Registry, code: str, batch: list[tuple[int, BulkExam]], results: list[BulkItemResult]
) -> None:
    mrns = sorted({e.patient_mrn for _, e in batch})
    patient_of = {
        mrn: (pid, person)
        for mrn, pid, person in _sql(
            reg,
            "SELECT mrn, id, person_id FROM patients WHERE institution_code = %(c)s "
            "AND mrn = ANY(%(m)s)",
            {"c": code, "m": mrns},
        )
    }
    taken = {
        uid: (c, no)
        for uid, c, no in _sql(
            reg,
            "SELECT exam_uid, institution_code, exam_no FROM exams WHERE exam_uid = ANY(%(u)s)",
            {"u": [e.exam_uid for _, e in batch]},
        )
    }
    existing = {
        no: uid
        for no, uid in _sql(
            reg,
            "SELECT exam_no, exam_uid FROM exams WHERE institution_code = %(c)s "
            "AND exam_no = ANY(%(n)s)",
            {"c": code, "n": [e.exam_no for _, e in batch]},
        )
    }
    foreign = ownership.foreign_studies(reg.session, code, (e.study_instance_uid for _, e in batch))
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
        elif e.study_instance_uid in foreign:
            _fail(results, index, "study_instance_uid", ownership.FOREIGN_STUDY)
        else:
            seen_no.add(e.exam_no)
            seen_uid.add(e.exam_uid)
            rows.append((index, e, patient))
    if not rows:
        return
    rows.sort(key=lambda item: item[1].exam_no)  # one lock order for every writer
    columns: dict[str, list[Any]] = {
        k: []
        for k in (
            "no", "uid", "patient", "person", "modality", "body_part", "exam_type", "method",
            "device", "dept", "when", "study", "hash",
        )
    }  # fmt: skip
    for _, e, (pid, person) in rows:
        columns["no"].append(e.exam_no)
        columns["uid"].append(e.exam_uid)
        columns["patient"].append(pid)
        columns["person"].append(person)
        columns["modality"].append(e.modality)
        columns["body_part"].append(e.body_part)
        columns["exam_type"].append(e.exam_type)
        columns["method"].append(e.method)
        columns["device"].append(e.device)
        columns["dept"].append(e.requesting_department)
        columns["when"].append(e.exam_datetime)
        columns["study"].append(e.study_instance_uid)
        columns["hash"].append(content_hash(ExamIn(**e.model_dump(exclude={"exam_no"}))))
    written = dict(_sql(reg, EXAMS_SQL, {"code": code, **columns}))
    for index, e, _ in rows:
        if e.exam_no in written:
            results[index].outcome = "updated" if e.exam_no in existing else "created"
    if not written:
        return
    _sql(
        reg,
        "INSERT INTO platform_requests (exam_id) SELECT id FROM exams WHERE id = ANY(%(ids)s) "
        "AND person_id IS NOT NULL AND master_index_id IS NULL ON CONFLICT DO NOTHING",
        {"ids": list(written.values())},
    )
    waiting = reg.session.execute(
        select(ImageStudy).where(
            ImageStudy.institution_code == code,
            ImageStudy.exam_id.is_(None),
            ImageStudy.accession_number.in_(list(written)),
        )
    ).scalars()
    for study in waiting:
        exam = reg.session.get(Exam, written[study.accession_number])
        if exam is not None and ownership.may_relink(exam, study):
            reg._link(exam, study)
