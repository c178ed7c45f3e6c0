"""The indexer on the real stack: intake through the HTTPS gateway with Keycloak tokens,
the master index resolved to DICOMweb URLs of a study really at central, reports with
history, bad input refused, and no clear-text ID or phone number in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, wait_for_instances
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from ..support.master_index import master_index_of
from .fresh import fresh_seed

A, B = "H0001", "H0002"


@pytest.fixture(scope="module")
def admin(stack: StackClient, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["admin"]) as client:
        yield client


def register(api: httpx.Client, study: SampleStudy, code: str = A) -> dict[str, Any]:
    base = f"/api/v1/institutions/{code}"
    answer = api.put(f"{base}/patients/{study.patient.mrn}", json=patient_record(study))
    assert answer.status_code == 200, answer.text
    answer = api.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_intake_then_master_index_resolves_to_dicomweb_of_a_study_at_central(
    stack: StackClient, admin: httpx.Client, tokens: dict[str, str]
) -> None:
    study = make_study(fresh_seed(), "CT", instances=3, institution_code=A)
    first = register(admin, study)
    assert first["outcome"] == "created" and first["exam"]["state"] == "registered"
    # the same records again change nothing
    assert register(admin, study)["outcome"] == "unchanged"
    assert (
        admin.put(
            f"/api/v1/institutions/{A}/patients/{study.patient.mrn}", json=patient_record(study)
        ).json()["outcome"]
        == "unchanged"
    )
    # the images go through the edge to central; the edge reports the arrival
    assert stack.send_to_edge("A", study.instances()).ok
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(central, study.exam.study_instance_uid, 3, timeout_s=120)
    arrival = admin.post(
        f"/api/v1/institutions/{A}/studies",
        json={
            "study_instance_uid": study.exam.study_instance_uid,
            "accession_number": study.exam.exam_no,
            "modalities": ["CT"],
            "series_count": 1,
            "instance_count": 3,
            "complete": True,
        },
    )
    assert arrival.json() == {"linked_exam_no": study.exam.exam_no, "reconciliation": False}
    master = master_index_of(admin, study)
    with stack.gateway(tokens["rad_a"]) as radiologist:
        resolved = radiologist.get(f"/api/v1/master-index/{master}")
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    exam, links = body["exam"], body["exam"]["links"]
    assert exam["state"] == "images-complete" and exam["instance_count"] == 3
    assert links["study"] == (
        f"{stack['GATEWAY_URL']}/dicom-web/studies/{study.exam.study_instance_uid}"
    )
    assert body["report"] is None
    # the URL answers: the study's metadata through the gateway
    with stack.gateway(tokens["rad_a"]) as viewer:
        metadata = viewer.get(links["metadata"], headers={"Accept": "application/dicom+json"})
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3
    assert {item["0020000D"]["Value"][0] for item in metadata.json()} == {
        study.exam.study_instance_uid
    }


def test_edge_reports_the_arrival_itself_and_images_meet_their_exam(
    stack: StackClient, admin: httpx.Client
) -> None:
    """No hand-made arrival: edge A records the study's tags and reports them to the indexer
    through the gateway with hospital A's gateway service account."""
    study = make_study(fresh_seed(), "MR", instances=3, institution_code=A)
    register(admin, study)
    assert stack.send_to_edge("A", study.instances()).ok

    def complete() -> dict[str, Any] | None:
        exam = admin.get(f"/api/v1/institutions/{A}/exams/{study.exam.exam_no}").json()
        return dict(exam) if exam["state"] == "images-complete" else None

    exam = eventually(complete, what="the exam images-complete", timeout=90, interval=0.5)
    assert exam["study_instance_uid"] == study.exam.study_instance_uid
    assert exam["instance_count"] == 3 and exam["series_count"] == 1


def test_report_revision_replaces_the_current_one_and_keeps_history(admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "MR", instances=1, institution_code=A)
    register(admin, study)
    path = f"/api/v1/institutions/{A}/exams/{study.exam.exam_no}/report"
    first = admin.put(path, json=report_record(study))
    assert first.status_code == 200 and first.json()["outcome"] == "created"
    assert admin.put(path, json=report_record(study)).json()["outcome"] == "unchanged"
    revised = report_record(study) | {"impression": "修订：考虑良性病变", "base_version": 1}
    second = admin.put(path, json=revised)
    assert second.status_code == 200 and second.json()["report"]["version"] == 2
    stale = admin.put(path, json=report_record(study) | {"findings": "x", "base_version": 1})
    assert stale.status_code == 409 and "current report is version 2" in stale.text
    current = admin.get(path).json()
    assert current["version"] == 2 and current["impression"] == "修订：考虑良性病变"
    history = admin.get(f"{path}/versions").json()
    assert history["current_version"] == 2
    assert [v["version"] for v in history["versions"]] == [2, 1]
    assert history["versions"][1]["impression"] == study.report.impression
    exam = admin.get(f"/api/v1/institutions/{A}/exams/{study.exam.exam_no}").json()
    assert exam["state"] == "report-revised"
    assert exam["state_times"]["reported"] and exam["state_times"]["report-revised"]


def test_person_lookup_across_institutions_with_filters(
    stack: StackClient, admin: httpx.Client, tokens: dict[str, str]
) -> None:
    ct = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    # the same person examined at hospital B (same national ID, B's own MRN and exam)
    mr = make_study(fresh_seed(), "MR", instances=1, institution_code=B)
    register(admin, ct, A)
    b_patient = patient_record(mr) | {
        "national_id": ct.patient.national_id,
        "birth_date": ct.patient.birth_date.isoformat(),
    }
    assert (
        admin.put(f"/api/v1/institutions/{B}/patients/{mr.patient.mrn}", json=b_patient)
    ).status_code == 200
    assert (
        admin.put(f"/api/v1/institutions/{B}/exams/{mr.exam.exam_no}", json=exam_record(mr))
    ).status_code == 200
    with stack.gateway(tokens["rad_b"]) as clinician:
        everything = clinician.post(
            "/api/v1/persons/exams/search",
            json={"national_id": ct.patient.national_id, "purpose": "prior imaging (互认)"},
        )
        only_mr = clinician.post(
            "/api/v1/persons/exams/search",
            json={
                "national_id": ct.patient.national_id,
                "purpose": "prior imaging (互认)",
                "modalities": ["MR"],
            },
        )
        outside = clinician.post(
            "/api/v1/persons/exams/search",
            json={
                "national_id": ct.patient.national_id,
                "purpose": "prior imaging (互认)",
                "date_from": "2000-01-01",
                "date_to": "2000-12-31",
            },
        )
    assert everything.status_code == 200, everything.text
    found = {(e["institution_code"], e["exam_no"]) for e in everything.json()["exams"]}
    assert found == {(A, ct.exam.exam_no), (B, mr.exam.exam_no)}
    assert [e["modality"] for e in only_mr.json()["exams"]] == ["MR"]
    assert outside.json()["exams"] == []


def test_unmatched_study_waits_for_reconciliation_then_links(admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    uid = study.exam.study_instance_uid
    arrival = admin.post(
        f"/api/v1/institutions/{A}/studies",
        json={"study_instance_uid": uid, "accession_number": "NO-SUCH-EXAM", "complete": True},
    )
    assert arrival.json() == {"linked_exam_no": None, "reconciliation": True}
    waiting = admin.get("/api/v1/reconciliation", params={"institution": A}).json()
    assert uid in {s["study_instance_uid"] for s in waiting}
    register(admin, study)
    resolved = admin.post(f"/api/v1/reconciliation/{uid}", json={"exam_no": study.exam.exam_no})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["study_instance_uid"] == uid
    assert resolved.json()["state"] == "images-complete"
    again = admin.get("/api/v1/reconciliation", params={"institution": A}).json()
    assert uid not in {s["study_instance_uid"] for s in again}


def test_images_first_then_exam_links_by_accession(admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    uid = study.exam.study_instance_uid
    admin.post(
        f"/api/v1/institutions/{A}/studies",
        json={"study_instance_uid": uid, "accession_number": study.exam.exam_no},
    )
    exam = register(admin, study)["exam"]
    assert exam["study_instance_uid"] == uid and exam["state"] == "images-arriving"


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"national_id": "110105194912310021"}, "national_id", "check character"),
        ({"national_id": "110105199913310026"}, "national_id", "birth date"),
        ({"national_id": "12345"}, "national_id", "18 characters"),
        ({"sex": "X"}, "sex", "'M', 'F', 'O' or 'U'"),
        ({"birth_date": "2999-01-01"}, "birth_date", "future"),
        ({"phone": "call me"}, "phone", "digits"),
        ({"name": None}, "name", "valid string"),
    ],
)
def test_invalid_patient_fields_are_refused_naming_field_and_rule(
    admin: httpx.Client, change: dict[str, Any], field: str, rule: str
) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    record = patient_record(study) | change
    answer = admin.put(f"/api/v1/institutions/{A}/patients/{study.patient.mrn}", json=record)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert any(e["loc"][-1] == field and rule in e["msg"] for e in errors), errors
    for secret in (study.patient.national_id, study.patient.phone, "110105194912310021"):
        assert secret not in answer.text  # values are never echoed
    missing = admin.get(f"/api/v1/institutions/{A}/patients/{study.patient.mrn}")
    assert missing.status_code == 404  # nothing written


def test_legacy_15_digit_number_is_upgraded(admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    legacy = "110105491231002"  # born 1949-12-31
    record = patient_record(study) | {"national_id": legacy, "birth_date": "1949-12-31"}
    answer = admin.put(f"/api/v1/institutions/{A}/patients/{study.patient.mrn}", json=record)
    assert answer.status_code == 200, answer.text
    got = admin.get(f"/api/v1/institutions/{A}/patients/{study.patient.mrn}").json()
    assert got["national_id_masked"] == "1****************X"  # 18 characters, check computed


def test_bad_references_and_conflicts(admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    base = f"/api/v1/institutions/{A}"
    orphan = admin.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study))
    assert orphan.status_code == 422 and "register the patient first" in orphan.text
    report = admin.put(f"{base}/exams/{study.exam.exam_no}/report", json=report_record(study))
    assert report.status_code == 404 and "register it first" in report.text
    unknown = admin.put(
        f"/api/v1/institutions/H9999/patients/{study.patient.mrn}", json=patient_record(study)
    )
    assert unknown.status_code == 404 and "not registered" in unknown.text
    register(admin, study)
    other_uid = exam_record(study) | {"exam_uid": "00000000-0000-4000-8000-000000000001"}
    clash = admin.put(f"{base}/exams/{study.exam.exam_no}", json=other_uid)
    assert clash.status_code == 409 and "another exam_uid" in clash.text
    naive = exam_record(study) | {"exam_datetime": "2026-11-02T08:00:00"}
    assert admin.put(f"{base}/exams/{study.exam.exam_no}", json=naive).status_code == 422
    bad_path = admin.put("/api/v1/institutions/h-1/patients/x", json=patient_record(study))
    assert bad_path.status_code == 422


def test_oversized_payload_is_refused(admin: httpx.Client) -> None:
    body = b'{"patients": [' + b'{"mrn": "x"},' * 1_500_000 + b'{"mrn": "y"}]}'
    answer = admin.post(
        f"/api/v1/institutions/{A}/bulk", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413


def test_bulk_intake_reports_per_record_and_is_idempotent(admin: httpx.Client) -> None:
    studies = [make_study(fresh_seed(), "CT", instances=1, institution_code=A) for _ in range(50)]
    patients = [patient_record(s) | {"mrn": s.patient.mrn} for s in studies]
    exams = [exam_record(s) | {"exam_no": s.exam.exam_no} for s in studies]
    bad_patient = patient_record(studies[0]) | {"mrn": "BAD1", "national_id": "110105194912310021"}
    bad_exam = exam_record(studies[0]) | {"exam_no": "BAD2", "patient_mrn": "NOBODY"}
    body = {"patients": [*patients, bad_patient], "exams": [*exams, bad_exam]}
    first = admin.post(f"/api/v1/institutions/{A}/bulk", json=body)
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["counts"] == {"created": 100, "error": 2}
    errors = [r for r in result["results"] if r["outcome"] == "error"]
    assert [(e["key"], e["errors"][0]["field"]) for e in errors] == [
        ("BAD1", "national_id"),
        ("BAD2", "patient_mrn"),
    ]
    again = admin.post(f"/api/v1/institutions/{A}/bulk", json=body).json()
    assert again["counts"] == {"unchanged": 100, "error": 2}
    # a record written in bulk is the same record for the single-record PUT
    single = admin.put(
        f"/api/v1/institutions/{A}/exams/{studies[3].exam.exam_no}", json=exam_record(studies[3])
    )
    assert single.json()["outcome"] == "unchanged"
    assert admin.get(f"/api/v1/institutions/{A}/patients/BAD1").status_code == 404


def test_tokens_institutions_and_roles_are_checked(
    stack: StackClient, admin: httpx.Client, tokens: dict[str, str]
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    register(admin, study)
    exam_path = f"/api/v1/institutions/{A}/exams/{study.exam.exam_no}"
    with stack.gateway() as anonymous:
        assert anonymous.get(exam_path).status_code == 401
        forged = anonymous.get(exam_path, headers={"Authorization": "Bearer abc.def.ghi"})
        assert forged.status_code == 401
    with stack.gateway(tokens["rad_a"]) as rad_a:
        assert rad_a.get(exam_path).status_code == 200
        write = rad_a.put(exam_path, json=exam_record(study))
        assert write.status_code == 403  # radiologists read, intake is for gateways/admins
    with stack.gateway(tokens["rad_b"]) as rad_b:
        assert rad_b.get(exam_path).status_code == 403  # another institution's exam


def test_postgres_holds_no_clear_text_id_or_phone(
    admin: httpx.Client, stack_settings: StackSettings
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    register(admin, study)
    ctx = load_context(stack_settings)
    secrets = [study.patient.national_id, study.patient.phone, study.patient.name_hanzi]
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer"), autocommit=True) as db:
        columns = db.execute(
            """SELECT table_name, column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'public'
                 AND data_type IN ('text', 'character varying', 'bytea')"""
        ).fetchall()
        assert len(columns) > 20
        for table, column, data_type in columns:
            match = (
                f"position(convert_to(%s, 'UTF8') in \"{column}\")"
                if data_type == "bytea"
                else f'position(%s in "{column}")'
            )
            for secret in secrets:
                hits = db.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE {match} > 0',  # noqa: S608 - names from the catalog
                    (secret,),
                ).fetchone()
                assert hits == (0,), f"{table}.{column} holds personal data in clear"
        # ...while the records are there, and readable through the API
        got = admin.get(f"/api/v1/institutions/{A}/patients/{study.patient.mrn}").json()
        assert got["name"] == study.patient.name_hanzi
