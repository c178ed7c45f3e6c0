"""The edges' DICOM operations in the central audit trail (#18, 4 and 9): a hospital's
gateway account reports them to POST /api/v1/audit/edge-events; each is one row as that
account and its institution, with the calling AE, what was asked (personal values as
pseudonyms), the answer count and the outcome; a retried batch adds nothing; other roles
are refused and a bad body is answered 422 naming the field."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import uuid
from typing import Any

from deploy.stack.client import StackClient
from deploy.stack.settings import StackSettings

from .test_audit import token
from .test_audit_detail import pseudonym

PATH = "/api/v1/audit/edge-events"
NAME = "WANG^XIAOMING"


def edge_event(**overrides: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "action": "dicom.c-find",
        "calling_ae": "HOSP_PACS",
        "called_ae": "EDGE_H0001",
        "source": "127.0.0.1",
        "level": "STUDY",
        "query": {"PatientName": NAME, "StudyDate": "20260101-"},
        "answers": 2,
        "outcome": "ok",
    } | overrides


def recorded(stack: StackClient, event_ids: set[str]) -> list[dict[str, Any]]:
    with stack.gateway(token(stack, "AUDITOR")) as auditor:
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)).isoformat()
        events = auditor.get("/api/v1/audit", params={"since": since, "limit": 10000}).json()
    return [e for e in events["events"] if e["event_id"] in event_ids]


def test_a_gateway_reports_its_edges_operations_once_each(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    study = "2.25." + str(int.from_bytes(secrets.token_bytes(12), "big"))
    find = edge_event()
    move = edge_event(
        action="dicom.c-move",
        query={"StudyInstanceUID": study},
        answers=1,
        calling_ae="HOSP_VIEWER",
    )
    refused = edge_event(
        action="dicom.association-refused",
        calling_ae="STRANGER",
        source="10.1.2.3",
        level="",
        query={},
        answers=0,
        outcome="refused",
    )
    body = {"events": [find, move, refused]}
    account = stack.gateway_account_token("H0001")
    claims = json.loads(base64.urlsafe_b64decode(account.split(".")[1] + "=="))
    with stack.gateway(account) as edge:
        first = edge.post(PATH, json=body)
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": 3}
        again = edge.post(PATH, json=body)  # the edge did not hear the answer: it resends
        assert again.status_code == 200 and again.json() == {"accepted": 3}
    rows = {r["event_id"]: r for r in recorded(stack, {find["event_id"], move["event_id"],
                                                       refused["event_id"]})}  # fmt: skip
    assert len(rows) == 3  # one row each, the retry added none
    assert {r["actor"] for r in rows.values()} == {claims["sub"]}  # the gateway account
    assert {r["institution"] for r in rows.values()} == {"H0001"}
    assert {r["roles"].count("gateway") for r in rows.values()} == {1}
    found = rows[find["event_id"]]
    assert (found["action"], found["method"], found["resource"]) == (
        "dicom.c-find",
        "C-FIND",
        "dicom:STUDY",
    )
    assert (found["calling_ae"], found["called_ae"], found["answers"], found["outcome"]) == (
        "HOSP_PACS",
        "EDGE_H0001",
        2,
        200,
    )
    assert found["filters"] == {
        "QueryRetrieveLevel": "STUDY",
        "PatientName": pseudonym(stack_settings, "PatientName", NAME),
        "StudyDate": "20260101-",
    }
    assert NAME not in str(rows)
    moved = rows[move["event_id"]]
    assert (moved["resource"], moved["calling_ae"], moved["answers"]) == (
        f"study:{study}",
        "HOSP_VIEWER",
        1,
    )
    nope = rows[refused["event_id"]]
    assert (nope["method"], nope["outcome"], nope["source"]) == ("A-ASSOCIATE", 403, "10.1.2.3")
    assert dt.datetime.fromisoformat(found["occurred_at"]) == dt.datetime.fromisoformat(find["at"])


def test_only_gateway_accounts_report_and_a_bad_body_names_its_field(
    stack: StackClient,
) -> None:
    body = {"events": [edge_event()]}
    allowed = {"events": [edge_event()]}
    for who in ("RADIOLOGIST_A", "AUDITOR", "ADMIN"):
        with stack.gateway(token(stack, who)) as other:
            assert other.post(PATH, json=allowed).status_code == 403, who
    with stack.gateway() as anonymous:
        assert anonymous.post(PATH, json=body).status_code == 401
    bad = {
        "level": {"events": [edge_event(level="WORKLIST")]},
        "action": {"events": [edge_event(action="dicom.c-echo")]},
        "event_id": {"events": [edge_event(event_id="not-a-uuid")]},
        "at": {"events": [edge_event(at="yesterday")]},
        "source": {"events": [edge_event(source="not an address")]},
        "answers": {"events": [edge_event(answers=-1)]},
        "calling_ae": {"events": [edge_event(calling_ae="A" * 17)]},
        "query": {"events": [edge_event(query={"Patient Name": "x"})]},
        "events": {"events": [edge_event() for _ in range(501)]},
    }
    with stack.gateway(stack.gateway_account_token("H0002")) as edge:
        for field, body in bad.items():
            answer = edge.post(PATH, json=body)
            assert answer.status_code == 422, (field, answer.text)
            named = {str(part) for error in answer.json()["detail"] for part in error["loc"]}
            assert field in named, (field, answer.text)
        assert NAME not in answer.text  # values are not echoed
    refused_ids = {bad["events"]["events"][0]["event_id"], allowed["events"][0]["event_id"]}
    assert not recorded(stack, refused_ids)  # nothing of a refused request was recorded
