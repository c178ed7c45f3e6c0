"""The lookups build their JSON by hand (lookup_sql, for speed), so FastAPI never checks it
against the response_model the routes declare (#19, 3). Here the real answers are: every
field the model names, no other, each of its type (strict), nested models too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from deploy.samples.records import report_record
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient
from indexer.api.routes import lookup

from ..support.master_index import master_index_of
from .fresh import fresh_seed
from .test_indexer import A, register

DECLARED: dict[str, type[BaseModel]] = {
    route.path: route.response_model  # type: ignore[attr-defined,misc]
    for route in lookup.router.routes
}


def conforms(path: str, answer: httpx.Response) -> dict[str, Any]:
    """The answer, once it holds exactly what the route's declared model says."""
    assert answer.status_code == 200, answer.text
    DECLARED[path].model_validate_json(answer.content, strict=True, extra="forbid")
    return dict(json.loads(answer.content))


@pytest.fixture(scope="module")
def admin(stack: StackClient, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["admin"]) as client:
        yield client


def test_the_lookups_answer_what_their_response_models_declare(
    stack: StackClient, admin: httpx.Client, tokens: dict[str, str]
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    register(admin, study)
    index_id = master_index_of(admin, study)
    resolve = "/v1/master-index/{master_index_id}"
    bare = conforms(resolve, admin.get(f"/api/v1/master-index/{index_id}"))
    assert bare["report"] is None and bare["exam"]["exam_no"] == study.exam.exam_no
    report = f"/api/v1/institutions/{A}/exams/{study.exam.exam_no}/report"
    assert admin.put(report, json=report_record(study)).status_code == 200
    reported = conforms(resolve, admin.get(f"/api/v1/master-index/{index_id}"))
    assert reported["report"]["version"] == 1
    search = "/v1/persons/exams/search"
    purpose = {"purpose": "prior imaging (互认)"}
    with stack.gateway(tokens["rad_b"]) as clinician:
        by_number = {"national_id": study.patient.national_id}
        by_id = conforms(search, clinician.post(f"/api{search}", json=purpose | by_number))
        named = {"name": study.patient.name_hanzi, "birth_date": str(study.patient.birth_date)}
        by_name = conforms(search, clinician.post(f"/api{search}", json=purpose | named))
    for found in (by_id, by_name):
        assert study.exam.exam_no in {e["exam_no"] for e in found["exams"]}
