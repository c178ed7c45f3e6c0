"""互认 decisions and statistics (#16) on the real stack: a clinician of hospital B records
decisions on a CT of hospital A found by the person lookup; the wrong callers are refused;
the regulator and A's hospital admin read the statistics (counts, no patient data) as JSON
and CSV; each decision is in the audit trail; the rollup counts every current decision
once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from ..support.master_index import master_index_of
from .fresh import fresh_seed

A, B = "H0001", "H0002"
DECISIONS = "/api/v1/recognition/decisions"
STATISTICS = "/api/v1/recognition/statistics"
PURPOSE = "诊疗：当前就诊调阅既往检查 treatment: prior imaging for this visit"


@dataclass(frozen=True)
class PriorExam:
    study: SampleStudy
    master_index_id: str


def prior_ct_of_a(stack: StackClient, admin_token: str, instances: int = 2) -> PriorExam:
    """A CT of hospital A with its report, its images through edge A at central, and its
    master index ID (shared with tests/e2e/test_workspace.py)."""
    study = make_study(fresh_seed(), "CT", instances=instances, institution_code=A)
    base = f"/api/v1/institutions/{A}"
    with stack.gateway(admin_token) as admin:
        for path, body in (
            (f"{base}/patients/{study.patient.mrn}", patient_record(study)),
            (f"{base}/exams/{study.exam.exam_no}", exam_record(study)),
            (f"{base}/exams/{study.exam.exam_no}/report", report_record(study)),
        ):
            answer = admin.put(path, json=body)
            assert answer.status_code == 200, answer.text
        assert stack.send_to_edge("A", study.instances()).ok

        def complete() -> bool:
            exam = admin.get(f"{base}/exams/{study.exam.exam_no}").json()
            return exam["instance_count"] == instances and exam["study_instance_uid"] is not None

        eventually(complete, what="the exam's images at central", timeout=180, interval=1)
        return PriorExam(study, master_index_of(admin, study))


@pytest.fixture(scope="module")
def prior(stack: StackClient, tokens: dict[str, str]) -> PriorExam:
    return prior_ct_of_a(stack, tokens["admin"])


@pytest.fixture(scope="module")
def clients(stack: StackClient, tokens: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    names = ("clin_b", "rad_a", "hadmin_a", "regulator", "auditor", "rad_b")
    opened = {name: stack.gateway(tokens[name]) for name in names}
    try:
        yield {name: client.__enter__() for name, client in opened.items()}
    finally:
        for client in opened.values():
            client.__exit__(None, None, None)


def a_ct_line(answer: dict[str, Any]) -> dict[str, Any]:
    """This month's line of A's CTs (zeros when there is none yet)."""
    month = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m")
    for line in answer["rows"]:
        if (line["period"], line["institution_code"], line["modality"]) == (month, A, "CT"):
            return dict(line)
    return {"decisions": 0, "recognised": 0, "not_recognised": 0, "reasons": {"too-old": 0}}


def test_decisions_statistics_refusals_and_audit(
    stack: StackClient,
    stack_settings: StackSettings,
    prior: PriorExam,
    clients: dict[str, httpx.Client],
) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    mid, study = prior.master_index_id, prior.study
    regulator, clin_b = clients["regulator"], clients["clin_b"]
    before = regulator.get(STATISTICS)
    assert before.status_code == 200, before.text
    # the clinician of B finds the CT through the person lookup (the API's), with a purpose
    found = clin_b.post(
        "/api/v1/persons/exams/search",
        json={"national_id": study.patient.national_id, "purpose": PURPOSE},
    )
    assert found.status_code == 200, found.text
    assert mid in {e["master_index_id"] for e in found.json()["exams"]}

    first = clin_b.post(
        DECISIONS,
        json={"master_index_id": mid, "recognised": False, "reason": "too-old", "purpose": PURPOSE},
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["deciding_institution"], body["outcome"], body["replaced"]) == (
        B,
        "too-old",
        False,
    )
    middle = a_ct_line(regulator.get(STATISTICS).json())
    was = a_ct_line(before.json())
    assert middle["decisions"] == was["decisions"] + 1
    assert middle["reasons"]["too-old"] == was["reasons"]["too-old"] + 1
    # deciding again replaces B's decision: one decision, now recognised
    again = clin_b.post(
        DECISIONS, json={"master_index_id": mid, "recognised": True, "purpose": PURPOSE}
    )
    assert again.status_code == 200 and again.json()["replaced"] is True
    after = regulator.get(STATISTICS).json()
    now = a_ct_line(after)
    assert now["decisions"] == was["decisions"] + 1
    assert now["recognised"] == was["recognised"] + 1
    assert now["reasons"]["too-old"] == was["reasons"]["too-old"]
    assert (
        after["totals"]["exams_not_repeated"] == before.json()["totals"]["exams_not_repeated"] + 1
    )

    # refused: A's own radiologist (own hospital's exam), A's admin, bad reasons, no exam
    own = clients["rad_a"].post(
        DECISIONS, json={"master_index_id": mid, "recognised": True, "purpose": PURPOSE}
    )
    assert own.status_code == 422 and own.json()["detail"][0]["loc"] == ["body", "master_index_id"]
    hadmin = clients["hadmin_a"].post(
        DECISIONS, json={"master_index_id": mid, "recognised": True, "purpose": PURPOSE}
    )
    assert hadmin.status_code == 403
    for bad in ({"reason": "blurry"}, {"reason": "other"}, {"reason": None}):
        answer = clin_b.post(
            DECISIONS, json={"master_index_id": mid, "recognised": False, "purpose": PURPOSE, **bad}
        )
        assert answer.status_code == 422, (bad, answer.text)
    no_purpose = clin_b.post(DECISIONS, json={"master_index_id": mid, "recognised": True})
    assert no_purpose.status_code == 422
    missing = clin_b.post(
        DECISIONS, json={"master_index_id": "NO-SUCH-EXAM", "recognised": True, "purpose": PURPOSE}
    )
    assert missing.status_code == 404

    # statistics: the regulator's hold no patient data; A's admin reads A's, not B's
    text = regulator.get(STATISTICS).text
    for personal in (
        study.patient.mrn,
        study.patient.national_id,
        study.patient.name_hanzi,
        mid,
        study.exam.exam_no,
        study.exam.study_instance_uid,
    ):
        assert str(personal) not in text
    for line in after["rows"]:
        assert set(line) == {
            "period",
            "institution_code",
            "institution_name",
            "modality",
            "decisions",
            "recognised",
            "not_recognised",
            "rate",
            "reasons",
        }
    admin_a = clients["hadmin_a"].get(STATISTICS)  # decisions on A's exams, A's only
    assert admin_a.status_code == 200, admin_a.text
    assert {line["institution_code"] for line in admin_a.json()["rows"]} == {A}
    assert a_ct_line(admin_a.json())["recognised"] == now["recognised"]
    b_side = regulator.get(STATISTICS, params={"by": "deciding", "institution": B}).json()
    assert b_side["totals"]["decisions"] >= 1  # and B's own side counts what B decided
    assert clients["hadmin_a"].get(STATISTICS, params={"institution": B}).status_code == 403
    assert clin_b.get(STATISTICS).status_code == 403
    csv_answer = regulator.get(STATISTICS + ".csv", params={"institution": A, "modality": "CT"})
    assert csv_answer.status_code == 200
    assert csv_answer.headers["content-type"].startswith("text/csv")
    lines = csv_answer.text.removeprefix("\ufeff").splitlines()
    assert lines[0].startswith("period,institution_code,institution_name,modality,decisions")
    assert any(line.split(",")[1] == A for line in lines[1:])

    # the audit trail: every recording with who, the exam and the purpose, refusals too
    def recorded() -> list[dict[str, Any]]:
        answer = clients["auditor"].get("/api/v1/audit", params={"since": since, "limit": 10000})
        assert answer.status_code == 200
        mine = [
            e
            for e in answer.json()["events"]
            if e["action"] == "api.decide" and e["resource"] == f"master-index:{mid}"
        ]
        assert sum(e.get("count", 1) for e in mine if e["outcome"] == 200) >= 2
        assert {422, 403} <= {e["outcome"] for e in mine}
        return mine

    events = eventually(recorded, what="the decisions in the audit trail", timeout=15)
    ok = [e for e in events if e["outcome"] == 200]
    assert {e["username"] for e in ok} == {stack["DEMO_CLINICIAN_B_USER"]}
    assert {e["purpose"] for e in ok} == {PURPOSE}
    # each recording's outcome is kept, the replaced one's too (review M6)
    assert {(e["filters"] or {}).get("outcome") for e in ok} >= {"too-old", "recognised"}

    # the rollup counts each current decision exactly once on each side
    ctx = load_context(stack_settings)
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer")) as db:
        counted = db.execute(
            "SELECT (SELECT count(*) FROM recognition_decisions) * 2,"
            " (SELECT coalesce(sum(decisions), 0) FROM recognition_rollup)"
        ).fetchone()
        assert counted is not None and counted[0] == counted[1]


def test_the_workspace_pages_want_a_login(stack: StackClient) -> None:
    with httpx.Client(base_url=stack["GATEWAY_URL"], verify=False, timeout=10) as anonymous:  # noqa: S501 - the stack's own CA
        for method, path in (("GET", "/workspace/"), ("GET", "/workspace/statistics")):
            answer = anonymous.request(method, path)
            assert answer.status_code == 303, (path, answer.status_code)
            assert answer.headers["location"] == "/workspace/login"
        posted = anonymous.post("/workspace/search", data={"id_value": "x", "purpose_text": "xx"})
        assert posted.status_code == 303  # no session, nothing looked up


def page_client(stack: StackClient, token: str) -> httpx.Client:
    """The workspace's pages as a browser sends them: the session cookie (the access token
    itself, services/web/session.py) and the page's own Origin."""
    return httpx.Client(
        base_url=stack["GATEWAY_URL"],
        verify=False,  # noqa: S501 - the stack's own CA
        timeout=30,
        headers={"Cookie": f"imgcloud_web_workspace={token}", "Origin": stack["GATEWAY_URL"]},
    )


def test_the_page_finds_a_patient_by_the_own_hospitals_mrn(
    stack: StackClient, prior: PriorExam, tokens: dict[str, str], clients: dict[str, httpx.Client]
) -> None:
    """B's MRN of the same person (same national ID) finds A's CT on B's page; the same
    MRN means nothing at A, whose numbers are its own."""
    study = prior.study
    b_mrn = f"B{study.patient.mrn}"
    with stack.gateway(tokens["admin"]) as admin:
        b_patient = patient_record(study) | {"national_id": study.patient.national_id}
        answer = admin.put(f"/api/v1/institutions/{B}/patients/{b_mrn}", json=b_patient)
        assert answer.status_code == 200, answer.text
    form = {"id_kind": "mrn", "id_value": b_mrn, "purpose_text": "会诊 consultation"}
    with page_client(stack, tokens["clin_b"]) as page_b:
        found = page_b.post("/workspace/search", data=form)
        assert found.status_code == 200, found.text
        assert 'data-institution="H0001"' in found.text and prior.master_index_id in found.text
        assert b_mrn not in found.text  # the number is not shown back
        silent = page_b.post("/workspace/search", data=form | {"purpose_text": ""})
        assert silent.status_code == 422 and prior.master_index_id not in silent.text
    with page_client(stack, tokens["rad_a"]) as page_a:
        elsewhere = page_a.post("/workspace/search", data=form)
        assert elsewhere.status_code == 200 and 'id="no-exams"' in elsewhere.text
