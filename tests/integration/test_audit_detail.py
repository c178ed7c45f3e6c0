"""What an investigator needs from the audit trail (#18, 9): one row per access decision,
refusals and distinct resources never merged, the method, the resource at its real level
(study, series, instance, frames), the search filters with personal values as keyed
pseudonyms, and the client's address as the gateway saw it: a local process cannot set it
with X-Forwarded-For or X-Original-Remote."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

import httpx

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service
from deploy.stack.services.indexer import Indexer
from deploy.stack.settings import StackSettings
from indexer.security.pii import PiiCipher

from ..support.eventually import eventually
from .test_audit import token

SPOOFED = "203.0.113.7"


def uid() -> str:
    return "2.25." + str(int.from_bytes(secrets.token_bytes(12), "big"))


def trail(stack: StackClient, resource: str, since: str, want: int) -> list[dict[str, Any]]:
    """The auditor's view of a resource (and what lies below it), once `want` rows are in
    (records are written in batches every 100 ms)."""
    with stack.gateway(token(stack, "AUDITOR")) as auditor:

        def rows() -> list[dict[str, Any]] | None:
            answer = auditor.get(
                "/api/v1/audit", params={"resource": resource, "since": since, "limit": 1000}
            )
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["events"]
            return found if sum(r.get("count", 1) for r in found) >= want else None

        return eventually(rows, what=f"{want} audit rows of {resource}", timeout=15)


def pseudonym(stack_settings: StackSettings, keyword: str, value: str) -> str:
    indexer = service(load_context(stack_settings), "indexer")
    assert isinstance(indexer, Indexer)
    key = PiiCipher.from_file(indexer.pii_key_file)
    digest = hmac.new(
        key.blind_index_key, f"audit:{keyword}:{value}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{keyword}:{digest[:24]}"


def since() -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()


def test_each_refusal_and_each_level_is_its_own_row(stack: StackClient) -> None:
    study, series, instance = uid(), uid(), uid()
    base = f"/dicom-web/studies/{study}/series/{series}"
    start = since()
    with stack.gateway(token(stack, "RADIOLOGIST_B")) as other_hospital:
        for _ in range(3):
            assert other_hospital.get(base).status_code == 403
        assert other_hospital.get(f"{base}/instances/{instance}/frames/1").status_code == 403
        assert other_hospital.head(f"{base}/instances/{instance}").status_code == 403
    rows = trail(stack, f"study:{study}", start, 5)
    refused = [(r.get("method"), r["resource"], r["outcome"], r.get("count", 1)) for r in rows]
    assert sorted(refused) == sorted(
        [("GET", f"study:{study}/series:{series}", 403, 1)] * 3
        + [("GET", f"study:{study}/series:{series}/instance:{instance}/frames:1", 403, 1)]
        + [("HEAD", f"study:{study}/series:{series}/instance:{instance}", 403, 1)]
    )
    assert {r["username"] for r in rows} == {stack["DEMO_RADIOLOGIST_B_USER"]}
    assert {r["action"] for r in rows} == {"dicomweb.read"}


def test_granted_repeats_are_counted_not_lost(stack: StackClient) -> None:
    study = uid()
    start = since()
    with stack.gateway(token(stack, "ADMIN")) as admin:  # granted (central: no such study)
        for _ in range(4):
            admin.get(f"/dicom-web/studies/{study}/metadata")
    rows = trail(stack, f"study:{study}", start, 4)
    assert {(r["resource"], r.get("method"), r["outcome"]) for r in rows} == {
        (f"study:{study}/metadata", "GET", 200)
    }
    assert sum(r.get("count", 1) for r in rows) == 4


def test_search_filters_are_recorded_with_personal_values_pseudonymised(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    study, name, patient_id = uid(), "MA^HUA*", f"PID{secrets.token_hex(4)}"
    start = since()
    with stack.gateway(token(stack, "RADIOLOGIST_B")) as rad_b:
        answer = rad_b.get(
            f"/dicom-web/studies/{study}/series",
            params={"Modality": "CT", "PatientName": name, "00100020": patient_id},
        )
        assert answer.status_code == 403
    (row,) = trail(stack, f"study:{study}", start, 1)
    assert row["resource"] == f"study:{study}/search:series"
    assert row.get("filters") == {
        "Modality": "CT",
        "PatientName": pseudonym(stack_settings, "PatientName", name),
        "00100020": pseudonym(stack_settings, "PatientID", patient_id),
    }
    # the study list's own search (answered by the indexer) records its filters too
    start = since()
    with stack.gateway(token(stack, "RADIOLOGIST_A")) as rad_a:
        found = rad_a.get("/dicom-web/studies", params={"PatientID": patient_id, "limit": "5"})
        assert found.status_code == 200
    with stack.gateway(token(stack, "AUDITOR")) as auditor:
        expected = pseudonym(stack_settings, "PatientID", patient_id)
        events: list[dict[str, Any]] = []

        def recorded() -> list[dict[str, Any]]:
            events[:] = auditor.get("/api/v1/audit", params={"since": start}).json()["events"]
            return [e for e in events if (e.get("filters") or {}).get("PatientID") == expected]

        mine = eventually(recorded, what="the study list's search in the audit trail", timeout=15)
    assert mine[0]["filters"]["limit"] == "5" and mine[0]["method"] == "GET"
    assert patient_id not in str(events)


def test_only_the_gateway_sets_the_recorded_client_address(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    ctx = load_context(stack_settings)
    admin, rad_b = token(stack, "ADMIN"), token(stack, "RADIOLOGIST_B")
    direct, checked, proxied = uid(), uid(), uid()
    start = since()
    spoof = {"X-Forwarded-For": SPOOFED, "X-Original-Remote": SPOOFED, "X-Real-IP": SPOOFED}
    with httpx.Client(base_url=ctx.http("indexer"), timeout=30) as local:
        # a local process at the indexer's port: its headers are ignored, its address kept
        answer = local.get(
            f"/api/v1/institutions/H0001/studies/{direct}/grants",
            headers={"Authorization": f"Bearer {admin}", **spoof},
        )
        assert answer.status_code < 500
        decided = local.get(
            "/api/v1/authz/dicomweb",
            headers={
                "Authorization": f"Bearer {rad_b}",
                "X-Original-URI": f"/dicom-web/studies/{checked}/metadata",
                "X-Original-Method": "GET",
                **spoof,
            },
        )
        assert decided.status_code == 403
    with stack.gateway(rad_b) as gateway:  # the gateway overwrites what a client sends
        gateway.get(f"/dicom-web/studies/{proxied}/metadata", headers=spoof)
    for resource in (f"study:{direct}", f"study:{checked}", f"study:{proxied}"):
        rows = trail(stack, resource, start, 1)
        assert rows, resource
        assert {r["source"] for r in rows} == {"127.0.0.1"}, resource
