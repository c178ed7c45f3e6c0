"""Issue #18 repeat, against the real stack through the gateway: a study belongs to the
institution whose edge's arrival named it (services/ownership.py).
- another hospital's exam cannot name it (409 for one exam, a per-record error in bulk);
- a 互认 lookup of an exam that names a study its hospital does not own opens nothing;
- a grant whose owner is not the study's owner by arrival does not let anyone read;
- an arrival of a study owned by another hospital is refused;
- a matching accession no. does not move an exam to another study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from pydicom.uid import generate_uid

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings
from tests.raw_dicom import part10

from ..support.master_index import master_index_id
from .fresh import fresh_seed

A, B = "H0001", "H0002"
DICOM = {"Content-Type": "application/dicom"}


@dataclass
class Delivered:
    study: SampleStudy
    uid: str
    orthanc_instance: str


def arrival(uid: str, accession: str) -> dict[str, Any]:
    return {
        "study_instance_uid": uid,
        "accession_number": accession,
        "modalities": ["CT"],
        "series_count": 1,
        "instance_count": 1,
        "complete": True,
    }


def deliver(client: httpx.Client, code: str, register: bool = True) -> Delivered:
    """A study of `code`: its patient and exam registered, one instance at central, and
    the arrival its edge reports (linked to the exam)."""
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=code)
    base = f"/api/v1/institutions/{code}"
    if register:
        for path, record in (
            (f"{base}/patients/{study.patient.mrn}", patient_record(study)),
            (f"{base}/exams/{study.exam.exam_no}", exam_record(study)),
        ):
            assert client.put(path, json=record).status_code == 200
    stored = client.post(
        "/orthanc/instances", content=part10(next(study.instances())), headers=DICOM
    )
    assert stored.status_code == 200, stored.text
    uid = study.exam.study_instance_uid
    answer = client.post(f"{base}/studies", json=arrival(uid, study.exam.exam_no))
    assert answer.status_code == 200, answer.text
    return Delivered(study, uid, stored.json()["ID"])


def forged_exam(client: httpx.Client, uid: str) -> tuple[SampleStudy, dict[str, Any]]:
    """B's patient (valid national ID) and an exam record naming study `uid`."""
    own = make_study(fresh_seed(), "CT", instances=1, institution_code=B)
    path = f"/api/v1/institutions/{B}/patients/{own.patient.mrn}"
    assert client.put(path, json=patient_record(own)).status_code == 200
    return own, {**exam_record(own), "study_instance_uid": uid}


def b_reads(gw: dict[str, httpx.Client], delivered: Delivered) -> int:
    return gw[B].get(f"/orthanc/instances/{delivered.orthanc_instance}/file").status_code


def test_an_exam_cannot_name_another_hospitals_delivered_study(
    gw: dict[str, httpx.Client],
) -> None:
    of_a = deliver(gw[A], A)
    own, record = forged_exam(gw[B], of_a.uid)
    answer = gw[B].put(f"/api/v1/institutions/{B}/exams/EVIL{fresh_seed()}", json=record)
    assert answer.status_code == 409, answer.text
    assert "study_instance_uid" in answer.text
    assert "another institution" in answer.text
    assert of_a.study.patient.mrn not in answer.text and A not in answer.text
    bulk = gw[B].post(
        f"/api/v1/institutions/{B}/bulk",
        json={"exams": [{**record, "exam_no": f"EVIL{fresh_seed()}"}]},
    )
    assert bulk.status_code == 200, bulk.text
    (result,) = bulk.json()["results"]
    assert result["outcome"] == "error", result
    assert result["errors"][0]["field"] == "study_instance_uid", result
    # B's own study UID in an exam is still fine
    mine = gw[B].put(
        f"/api/v1/institutions/{B}/exams/{own.exam.exam_no}", json=exam_record(own, True)
    )
    assert mine.status_code == 200, mine.text


def test_a_lookup_of_an_exam_naming_another_hospitals_study_grants_nothing(
    stack: StackClient, gw: dict[str, httpx.Client], tokens: dict[str, str]
) -> None:
    """B registers an exam naming a study before A's edge delivers it (the UID known in
    advance); A's radiologist's 互认 lookup of B's exam must not write a grant in B's name
    on A's study."""
    uid = generate_uid()
    _, record = forged_exam(gw[B], uid)
    no = f"EVIL{fresh_seed()}"
    assert gw[B].put(f"/api/v1/institutions/{B}/exams/{no}", json=record).status_code == 200
    of_a = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    ds = next(of_a.instances())
    ds.StudyInstanceUID = uid
    # the study reaches the archive and A's edge reports its arrival: A owns it
    with stack.gateway(tokens["admin"]) as admin:
        stored = admin.post("/orthanc/instances", content=part10(ds), headers=DICOM)
        assert stored.status_code == 200, stored.text
    answer = gw[A].post(f"/api/v1/institutions/{A}/studies", json=arrival(uid, of_a.exam.exam_no))
    assert answer.status_code == 200, answer.text
    with stack.gateway(tokens["admin"]) as admin:
        lookup = f"/api/v1/master-index/{master_index_id(admin, B, no)}"
    with stack.gateway(tokens["rad_a"]) as radiologist:
        assert radiologist.get(lookup, params={"purpose": "second opinion"}).status_code == 200
    with stack.gateway(tokens["admin"]) as admin:  # the grants in B's name on the study
        listed = admin.get(f"/api/v1/institutions/{B}/studies/{uid}/grants")
    assert listed.status_code == 200, listed.text
    assert listed.json() == []


def test_a_grant_not_made_by_the_studys_owner_does_not_open_it(
    stack: StackClient,
    stack_settings: StackSettings,
    gw: dict[str, httpx.Client],
    tokens: dict[str, str],
) -> None:
    """A grant row in B's name on A's study (as a forged exam's 互认 lookup wrote them)
    gives nobody access: only the owner by arrival shares."""
    of_a = deliver(gw[A], A)
    assert b_reads(gw, of_a) == 403
    ctx = load_context(stack_settings)
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer"), autocommit=True) as db:
        db.execute(
            "INSERT INTO grants (study_instance_uid, owner_institution, institution_code, kind,"
            " purpose, granted_by) VALUES (%s, %s, %s, 'consent', 'forged', 'test')",
            (of_a.uid, B, B),
        )
    assert b_reads(gw, of_a) == 403
    with stack.gateway(tokens["rad_b"]) as radiologist:  # B's study search shows nothing
        found = radiologist.get("/dicom-web/studies", params={"StudyInstanceUID": of_a.uid})
    assert found.status_code in (200, 204), found.text
    assert of_a.uid not in found.text


def test_an_arrival_of_another_hospitals_study_is_refused(gw: dict[str, httpx.Client]) -> None:
    of_a = deliver(gw[A], A)
    answer = gw[B].post(f"/api/v1/institutions/{B}/studies", json=arrival(of_a.uid, "X1"))
    assert answer.status_code == 409, answer.text


def test_a_matching_accession_does_not_move_an_exam_to_another_study(
    stack: StackClient, gw: dict[str, httpx.Client], tokens: dict[str, str]
) -> None:
    of_a = deliver(gw[A], A)
    no = of_a.study.exam.exam_no
    exam_path = f"/api/v1/institutions/{A}/exams/{no}"
    with stack.gateway(tokens["admin"]) as admin:
        before = admin.get(exam_path).json()
        other = generate_uid()
        answer = gw[A].post(f"/api/v1/institutions/{A}/studies", json=arrival(other, no))
        after = admin.get(exam_path).json()
    assert before["study_instance_uid"] == of_a.uid and before["state"] == "images-complete"
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"linked_exam_no": None, "reconciliation": True}
    assert after["study_instance_uid"] == of_a.uid
    assert after["state"] == before["state"]
    with stack.gateway(tokens["hadmin_a"]) as admin_of_a:
        waiting = admin_of_a.get("/api/v1/reconciliation", params={"institution": A})
    assert waiting.status_code == 200, waiting.text
    assert other in {s["study_instance_uid"] for s in waiting.json()}
