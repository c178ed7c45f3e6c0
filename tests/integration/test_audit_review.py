"""What the security review of #18's audit work (9, 10) found, against the real stack:
- a local process that binds the gateway's old loopback address (127.0.0.2) cannot set the
  recorded client address with X-Forwarded-For, X-Original-Remote or X-Real-IP: only the
  gateway's secret header makes them count;
- a caller without a token cannot plant filters that break the auditor's export;
- revoking the id of an already revoked grant still ends the live grant of its key."""

from __future__ import annotations

import datetime as dt
import secrets

import httpx

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings

from .test_audit import token
from .test_audit_detail import SPOOFED, trail, uid
from .test_ingest_identity_and_grants import A, B, StudyOfA, b_reads, study_of_a

__all__ = ["study_of_a"]  # the fixture, shared (gw comes from conftest.py)
LIES = {"X-Forwarded-For": SPOOFED, "X-Original-Remote": SPOOFED, "X-Real-IP": SPOOFED}


def since() -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()


def test_a_local_process_on_any_loopback_address_cannot_set_the_recorded_address(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    ctx = load_context(stack_settings)
    admin, rad_b = token(stack, "ADMIN"), token(stack, "RADIOLOGIST_B")
    direct, checked, guessed, proxied = uid(), uid(), uid(), uid()
    start = since()
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=ctx.http("indexer"), timeout=30, transport=transport) as local:
        answer = local.get(
            f"/api/v1/institutions/H0001/studies/{direct}/grants",
            headers={"Authorization": f"Bearer {admin}", **LIES},
        )
        assert answer.status_code < 500
        for study, secret in ((checked, None), (guessed, secrets.token_hex(16))):
            decided = local.get(
                "/api/v1/authz/dicomweb",
                headers={
                    "Authorization": f"Bearer {rad_b}",
                    "X-Original-URI": f"/dicom-web/studies/{study}/metadata",
                    "X-Original-Method": "GET",
                    **LIES,
                    **({"X-Gateway-Secret": secret} if secret else {}),
                },
            )
            assert decided.status_code == 403
    # through the gateway, from another loopback address: that address, whatever is sent
    through = httpx.HTTPTransport(local_address="127.0.0.3", verify=stack.ca_context())
    with httpx.Client(base_url=stack.env["GATEWAY_URL"], timeout=30, transport=through) as client:
        answer = client.get(
            f"/dicom-web/studies/{proxied}/metadata",
            headers={"Authorization": f"Bearer {rad_b}", "X-Gateway-Secret": "x", **LIES},
        )
        assert answer.status_code == 403
    expected = {direct: "127.0.0.2", checked: "127.0.0.2", guessed: "127.0.0.2"}
    for study, source in {**expected, proxied: "127.0.0.3"}.items():
        rows = trail(stack, f"study:{study}", start, 1)
        assert rows, study
        assert {r["source"] for r in rows} == {source}, study


def test_filters_sent_without_a_token_cannot_break_the_export(stack: StackClient) -> None:
    study = uid()
    start = since()
    # keys and values that JSON escapes to twice their length (\"): 4.7 kB of JSON
    query = "&".join(f"{i:02d}{'%22' * 62}={'%22' * 64}" for i in range(18))
    with stack.gateway() as anonymous:
        answer = anonymous.get(f"/dicom-web/studies/{study}/series?{query}")
        assert answer.status_code == 401
    rows = trail(stack, f"study:{study}", start, 1)  # asserts the export answers 200
    (row,) = rows
    assert row["outcome"] == 401 and row["username"] == "anonymous"
    assert row["filters"]["(truncated)"] >= 1
    assert len(row["filters"]) <= 18


def test_revoking_an_already_revoked_grant_ends_the_live_one_of_its_key(
    stack: StackClient, gw: dict[str, httpx.Client], study_of_a: StudyOfA
) -> None:
    path = f"/api/v1/institutions/{A}/studies/{study_of_a.uid}/grants"
    first = gw[A].post(path, json={"to_institution": B, "kind": "push"})
    assert first.status_code == 200, first.text
    assert gw[A].delete(f"{path}/{first.json()['id']}").status_code == 200
    again = gw[A].post(path, json={"to_institution": B, "kind": "push"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] != first.json()["id"] and again.json()["revoked_at"] is None
    assert b_reads(gw, study_of_a) == 200
    revoked = gw[A].delete(f"{path}/{first.json()['id']}")  # the old, revoked id
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert b_reads(gw, study_of_a) == 403  # the grant kept live is revoked too
