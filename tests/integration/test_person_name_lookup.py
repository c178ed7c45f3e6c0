"""互认 person lookup by 汉字 name and birth date (keyed blind index), beside the national
ID lookup: a name alone finds no one, a family name only among one's own patients."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings

from .fresh import fresh_seed
from .test_audit import indexer_cli

SEARCH = "/api/v1/persons/exams/search"
HANZI = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜"
PURPOSE = "复诊对比 follow-up"


def register(stack: StackClient, token: str, code: str, study: SampleStudy, **patient: Any) -> None:
    base = f"/api/v1/institutions/{code}"
    with stack.gateway(token) as api:
        record = patient_record(study) | patient
        put = api.put(f"{base}/patients/{study.patient.mrn}", json=record)
        assert put.status_code in (200, 201), put.text
        put = api.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study))
        assert put.status_code in (200, 201), put.text


@pytest.fixture(scope="module")
def people(stack: StackClient, tokens: dict[str, str]) -> dict[str, Any]:
    """One person seen at hospitals A and B (same national ID), and at B a namesake born
    on another day."""
    rng = random.Random(fresh_seed())  # noqa: S311 - sample data
    family, given = rng.choice(HANZI), "".join(rng.choices(HANZI, k=2))
    at_a = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    at_b = make_study(fresh_seed(), "DX", instances=1, institution_code="H0002")
    namesake = make_study(fresh_seed(), "MR", instances=1, institution_code="H0002")
    born = at_a.patient.birth_date
    register(stack, tokens["admin"], "H0001", at_a, name=family + given)
    # B writes the name its own way (DICOM PN) and knows the same national ID
    same_person = dataclasses.replace(at_b.patient, national_id=at_a.patient.national_id)
    at_b = dataclasses.replace(at_b, patient=same_person)
    register(
        stack, tokens["admin"], "H0002", at_b,
        name=f"X^Y={family}^{given}", birth_date=born.isoformat(), sex=at_a.patient.sex,
    )  # fmt: skip
    register(
        stack, tokens["admin"], "H0002", namesake,
        name=family + given, national_id=None, birth_date=(born - dt.timedelta(days=1)).isoformat(),
    )  # fmt: skip
    return {"family": family, "given": given, "born": born.isoformat(),
            "a": at_a, "b": at_b, "namesake": namesake}  # fmt: skip


def search(stack: StackClient, token: str, **body: Any) -> Any:
    with stack.gateway(token) as api:
        return api.post(SEARCH, json={"purpose": PURPOSE, **body})


def exam_nos(answer: Any) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {e["exam_no"] for e in answer.json()["exams"]}


def test_a_clinician_finds_a_persons_exams_by_chinese_name_and_birth_date(
    stack: StackClient, tokens: dict[str, str], people: dict[str, Any]
) -> None:
    mine = {people["a"].exam.exam_no, people["b"].exam.exam_no}
    family, given = people["family"], people["given"]
    full = family + given
    for spelled in (full, f"{family}^{given}", f" {family} {given}", f"MA^HUA={family}^{given}"):
        found = exam_nos(search(stack, tokens["clin_b"], name=spelled, birth_date=people["born"]))
        assert found == mine, spelled  # both hospitals; not the namesake born another day
    other_day = (dt.date.fromisoformat(people["born"]) - dt.timedelta(days=1)).isoformat()
    assert exam_nos(search(stack, tokens["clin_b"], name=full, birth_date=other_day)) == {
        people["namesake"].exam.exam_no
    }
    # the national ID lookup is as it was
    by_id = search(stack, tokens["clin_b"], national_id=people["a"].patient.national_id)
    assert exam_nos(by_id) == mine


def test_a_name_alone_finds_no_one_and_a_family_name_only_ones_own_patients(
    stack: StackClient, tokens: dict[str, str], people: dict[str, Any]
) -> None:
    alone = search(stack, tokens["clin_b"], name=people["family"] + people["given"])
    assert alone.status_code == 422 and "birth_date" in alone.text
    both = search(stack, tokens["clin_b"], name="x", national_id=people["a"].patient.national_id)
    assert both.status_code == 422
    family = {"family_name": people["family"], "birth_date": people["born"]}
    assert exam_nos(search(stack, tokens["rad_a"], **family)) == {people["a"].exam.exam_no}
    assert exam_nos(search(stack, tokens["rad_b"], **family)) == {people["b"].exam.exam_no}
    assert search(stack, tokens["auditor"], **family).status_code == 403


def test_patients_loaded_in_bulk_are_found_by_name(
    stack: StackClient, tokens: dict[str, str]
) -> None:
    rng = random.Random(fresh_seed())  # noqa: S311 - sample data
    name = rng.choice(HANZI) + "".join(rng.choices(HANZI, k=2))
    study = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    patient = patient_record(study) | {"mrn": study.patient.mrn, "name": name}
    exam = exam_record(study) | {"exam_no": study.exam.exam_no}
    with stack.gateway(tokens["admin"]) as api:
        loaded = api.post(
            "/api/v1/institutions/H0001/bulk", json={"patients": [patient], "exams": [exam]}
        )
    assert loaded.status_code == 200 and loaded.json()["counts"] == {"created": 2}, loaded.text
    born = study.patient.birth_date.isoformat()
    found = search(stack, tokens["rad_a"], name=name, birth_date=born)
    assert exam_nos(found) == {study.exam.exam_no}


def test_patients_registered_before_the_name_index_join_it_by_the_command(
    stack: StackClient, tokens: dict[str, str], stack_settings: StackSettings
) -> None:
    """A site upgraded to 0008 indexes its earlier patients with `indexer names index`
    (the launcher runs it after the migrations); here a patient's rows are removed to
    stand for one registered before."""
    rng = random.Random(fresh_seed())  # noqa: S311 - sample data
    name = rng.choice(HANZI) + "".join(rng.choices(HANZI, k=2))
    study = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    register(stack, tokens["admin"], "H0001", study, name=name)
    born = study.patient.birth_date.isoformat()
    ctx = load_context(stack_settings)
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer"), autocommit=True) as db:
        db.execute(
            "DELETE FROM patient_name_index WHERE patient_id = (SELECT id FROM patients"
            " WHERE institution_code = 'H0001' AND mrn = %s)",
            (study.patient.mrn,),
        )
    assert exam_nos(search(stack, tokens["rad_a"], name=name, birth_date=born)) == set()
    indexed = indexer_cli(stack_settings, "names", "index")
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    assert exam_nos(search(stack, tokens["rad_a"], name=name, birth_date=born)) == {
        study.exam.exam_no
    }


def test_person_searches_are_limited_per_caller(
    stack: StackClient, tokens: dict[str, str], people: dict[str, Any]
) -> None:
    """Guessing a birth date by hundreds of name searches a second is throttled at the
    gateway (429 with a reason); another caller is not affected."""
    token = stack.password_token(stack["DEMO_CLINICIAN_B_USER"], stack["DEMO_CLINICIAN_B_PASSWORD"])
    born = dt.date.fromisoformat(people["born"])
    name = people["family"] + people["given"]
    with stack.gateway(str(token["access_token"])) as api:
        codes = [
            api.post(
                SEARCH,
                json={"purpose": PURPOSE, "name": name,
                      "birth_date": (born - dt.timedelta(days=day)).isoformat()},
            )
            for day in range(60)
        ]  # fmt: skip
    limited = [answer for answer in codes if answer.status_code == 429]
    assert len(limited) >= 20 and "too many person searches" in limited[0].json()["detail"]
    assert all(answer.status_code in (200, 429) for answer in codes)
    assert search(stack, tokens["rad_b"], name=name, birth_date=people["born"]).status_code == 200
