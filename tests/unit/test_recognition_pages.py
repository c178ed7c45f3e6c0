"""The workspace's templates (#16): they render, escape what they show, post the
patient's number (never put it in a link), and run no script."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from indexer.api import deps
from indexer.api.errors import install as install_errors
from indexer.api.routes import workspace
from indexer.security.auth import Principal
from indexer.services import recognition
from indexer.services.recognition_stats import Query, summarise
from indexer.web import session
from indexer.web.pages import TEMPLATES

CLIN_B = Principal("s1", "clinician.b", "H0002", frozenset({"clinician"}))
EVIL = "<script>alert(1)</script>"


def page(name: str, **context: Any) -> str:
    base = {
        "who": CLIN_B,
        "area": "/workspace",
        "purposes": recognition.PURPOSES,
        "reasons": recognition.REASONS,
        "modalities": workspace.MODALITIES,
        "can_search": True,
        "can_read_statistics": False,
        "form": {},
    }
    return TEMPLATES.env.get_template(name).render(**(base | context))


def test_the_search_form_posts_the_number_and_states_a_purpose() -> None:
    html = page("workspace_search.html")
    form = re.search(r'<form method="post" action="/workspace/search"', html)
    assert form, html
    assert 'name="id_value"' in html and 'name="purpose_choice"' in html
    for purpose in recognition.PURPOSES:
        assert f'<option value="{purpose}"' in html
    assert "<script" not in html


def test_the_timeline_escapes_and_carries_the_purpose_in_the_form() -> None:
    exams = [
        {
            "master_index_id": "MI-123456",
            "institution_code": "H0001",
            "institution_name": EVIL,
            "exam_no": "X1",
            "modality": "CT",
            "body_part": "CHEST",
            "exam_type": "CT胸部平扫",
            "instance_count": 4,
            "exam_datetime": "2026-11-02T09:00:00+08:00",
            "has_report": True,
        }
    ]
    html = page("workspace_timeline.html", exams=exams, purpose="会诊 consultation")
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "2026-11-02" in html and "CT胸部平扫" in html and ">4<" in html
    assert 'name="purpose" value="会诊 consultation"' in html
    assert 'name="master_index_id" value="MI-123456"' in html


def test_the_exam_page_shows_their_conclusion_apart_and_every_reason() -> None:
    exam = {
        "institution_code": "H0001", "exam_no": "X1", "modality": "CT", "body_part": "CHEST",
        "exam_type": "CT胸部平扫", "instance_count": 4, "exam_datetime": "2026-11-02T09:00",
        "links": {"viewer": "https://gw.example/viewer?StudyInstanceUIDs=1.2.3"},
    }  # fmt: skip
    report = {
        "impression": EVIL, "findings": "双肺纹理清晰", "author": "李医生",
        "reviewer": "张主任", "approved_at": "2026-11-02T11:00", "version": 1,
    }  # fmt: skip
    html = page(
        "workspace_exam.html",
        found={"master_index_id": "MI-123456"},
        exam=exam,
        report=report,
        institution_name="Demo Hospital A",
        purpose="p1",
    )
    assert EVIL not in html and "&lt;script&gt;" in html
    assert 'href="https://gw.example/viewer?StudyInstanceUIDs=1.2.3"' in html
    assert "the other hospital's conclusion" in html
    for code in recognition.REASONS:
        assert f'value="{code}"' in html


@pytest.mark.parametrize("rate_rows", [[], [("2026-12", "H0001", "A", "CT", "too-old", 2)]])
def test_the_statistics_page_renders(rate_rows: list[tuple[Any, ...]]) -> None:
    html = page(
        "workspace_statistics.html",
        answer=summarise(rate_rows),
        query=Query(None),
        csv_query="by=exam",
        can_read_statistics=True,
    )
    assert 'href="/workspace/statistics.csv?by=exam"' in html
    assert 'id="total-decisions">' + str(sum(r[5] for r in rate_rows)) in html


# --- the pages' routes, up to where they would reach the database ------------------------

GATEWAY = "https://gateway.example:8443"
REGULATOR = Principal("s4", "regulator.demo", None, frozenset({"regulator"}))
TOKENS = {"clinician": CLIN_B, "regulator": REGULATOR}


class Verifier:
    def verify(self, token: str) -> Principal:
        return TOKENS[token]


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr(deps, "get_verifier", lambda: Verifier())
    app = FastAPI()
    install_errors(app)
    session.install(app)
    app.state.settings = SimpleNamespace(gateway_url=GATEWAY)
    app.include_router(workspace.router)
    return TestClient(app, base_url=GATEWAY, follow_redirects=False)


def as_(client: TestClient, who: str) -> TestClient:
    client.cookies.set("imgcloud_web_workspace", who)
    return client


def test_the_first_page_is_the_search_for_a_clinician(client: TestClient) -> None:
    answer = as_(client, "clinician").get("/workspace/")
    assert answer.status_code == 200 and 'id="search-form"' in answer.text
    assert answer.headers["cache-control"] == "no-store"


def test_no_purpose_nothing_is_looked_up(client: TestClient) -> None:
    answer = as_(client, "clinician").post(
        "/workspace/search",
        data={"id_kind": "national_id", "id_value": "11010519491231002X"},
        headers={"Origin": GATEWAY},
    )
    assert answer.status_code == 422
    assert 'id="error"' in answer.text and 'id="timeline"' not in answer.text
    assert "11010519491231002X" not in answer.text  # the number is not shown back


def test_a_regulator_gets_no_search_and_a_clinician_no_statistics(client: TestClient) -> None:
    page = as_(client, "regulator").get("/workspace/")
    assert page.status_code == 200 and 'id="search-form"' not in page.text
    assert "/workspace/statistics" in page.text
    refused = as_(client, "clinician").get("/workspace/statistics")
    assert refused.status_code == 403 and "hospital admins and regulators" in refused.text


def test_a_decision_with_an_unlisted_reason_is_refused(client: TestClient) -> None:
    answer = as_(client, "clinician").post(
        "/workspace/decisions",
        data={"master_index_id": "MI-123456", "purpose": "会诊", "outcome": "blurry"},
        headers={"Origin": GATEWAY},
    )
    assert answer.status_code == 422 and "reason: one of: image-quality" in answer.text
