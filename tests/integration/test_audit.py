"""The audit trail: every API call and every DICOMweb decision is recorded (pseudonymised),
auditors read it, the chain is sealed, and editing one row in PostgreSQL is caught by the
verify command, which names exactly that row."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service
from deploy.stack.settings import REPO_ROOT, StackSettings

from ..support.eventually import eventually
from .fresh import fresh_seed

FIRST = "(SELECT MIN(id) FROM audit_events)"
RECORDED = "SELECT COALESCE(SUM(count), 0) FROM audit_events WHERE id > %s AND resource = %s"
EDIT_FIRST = f"UPDATE audit_events SET outcome = 200 WHERE id = {FIRST}"  # noqa: S608 - constants


def token(stack: StackClient, who: str) -> str:
    user, password = stack[f"DEMO_{who}_USER"], stack[f"DEMO_{who}_PASSWORD"]
    return str(stack.password_token(user, password)["access_token"])


def indexer_cli(stack_settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    ctx = load_context(stack_settings)
    env = service(ctx, "indexer").env()
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        env={**env, "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_accesses_are_recorded_pseudonymised_and_readable_by_auditors(
    stack: StackClient,
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    admin = token(stack, "ADMIN")
    with stack.gateway(admin) as api:
        base = "/api/v1/institutions/H0001"
        api.put(f"{base}/patients/{study.patient.mrn}", json=patient_record(study))
        api.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study))
        api.post(
            "/api/v1/persons/exams/search",
            json={"national_id": study.patient.national_id, "purpose": "audit test purpose"},
        )
    with stack.gateway() as anonymous:
        assert (
            anonymous.get(f"/api/v1/institutions/H0001/exams/{study.exam.exam_no}").status_code
            == 401
        )
    with stack.gateway(token(stack, "RADIOLOGIST_A")) as radiologist:
        assert radiologist.get("/api/v1/audit").status_code == 403  # auditors only
        radiologist.get(f"/dicom-web/studies/{study.exam.study_instance_uid}/metadata")
    with stack.gateway(token(stack, "AUDITOR")) as auditor:

        def recorded() -> str:  # records are written in batches every 100 ms
            answer = auditor.get("/api/v1/audit", params={"since": since, "limit": 10000})
            assert answer.status_code == 200
            check_trail(answer.json()["events"], stack, study)
            return answer.text

        text = eventually(recorded, what="the test's accesses in the audit trail", timeout=15)
    for personal in (study.patient.mrn, study.patient.national_id, study.patient.phone):
        assert personal not in text  # pseudonymised, never in clear


def check_trail(events: list[dict], stack: StackClient, study: SampleStudy) -> None:
    """The test's accesses, each recorded with who, what and how."""
    by_action: dict[str, list[dict]] = {}
    for event in events:
        by_action.setdefault(event["action"], []).append(event)
    exam_write = [
        e
        for e in by_action.get("api.put_exam", [])
        if e["resource"] == f"exam:H0001/{study.exam.exam_no}"
    ]
    assert exam_write and exam_write[-1]["username"] == stack["DEMO_ADMIN_USER"]
    assert exam_write[-1]["outcome"] == 200 and "platform-admin" in exam_write[-1]["roles"]
    search = by_action["api.person_exams"][-1]
    assert search["purpose"] == "audit test purpose" and search["resource"].startswith("person:")
    assert any(
        e["username"] == "anonymous" and e["outcome"] == 401 for e in by_action["api.get_exam"]
    )
    reads = [
        e
        for e in by_action.get("dicomweb.read", [])
        if e["resource"] == f"study:{study.exam.study_instance_uid}/metadata"
    ]
    assert reads and reads[-1]["username"] == stack["DEMO_RADIOLOGIST_A_USER"]
    assert reads[-1]["source"] == "127.0.0.1" and reads[-1]["method"] == "GET"


def test_edited_row_is_named_by_verify(stack: StackClient, stack_settings: StackSettings) -> None:
    ctx = load_context(stack_settings)
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer"), autocommit=True) as db:
        (before,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit_events").fetchone()  # type: ignore[misc]
        with stack.gateway(token(stack, "ADMIN")) as api:
            for _ in range(3):
                api.get("/api/v1/institutions/H0001/exams/NO-SUCH-EXAM")
        eventually(  # records are written in batches every 100 ms
            lambda: db.execute(RECORDED, (before, "exam:H0001/NO-SUCH-EXAM")).fetchone() == (3,),
            what="the three reads in the audit table",
            timeout=15,
        )
        sealed = indexer_cli(stack_settings, "audit", "seal")
        assert sealed.returncode == 0, sealed.stderr
        clean = indexer_cli(stack_settings, "audit", "verify")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        # the table refuses edits and deletes...
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute(EDIT_FIRST)
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute("DELETE FROM audit_events WHERE id = (SELECT MIN(id) FROM audit_events)")
        # ...so someone with the table owner's rights switches the guard off first
        victim, original = db.execute(
            "SELECT id, username FROM audit_events WHERE hash IS NOT NULL "
            "ORDER BY id DESC OFFSET 1 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        db.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        try:
            db.execute("UPDATE audit_events SET username = 'someone-else' WHERE id = %s", (victim,))
            caught = indexer_cli(stack_settings, "audit", "verify")
        finally:  # put it back, so the trail is whole again for whoever runs next
            db.execute("UPDATE audit_events SET username = %s WHERE id = %s", (original, victim))
            db.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    assert caught.returncode == 1
    named = [line for line in caught.stdout.splitlines() if line.startswith("audit record ")]
    assert named == [f"audit record {victim}: its content does not match its hash (edited)"]
    assert indexer_cli(stack_settings, "audit", "verify").returncode == 0  # restored
