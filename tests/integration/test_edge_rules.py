"""The edge's rules document is replaced at runtime, validated first, and enforced."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import time

import pydicom

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study, wait_for_instances


def put_rules(stack: StackClient, document: dict | str) -> tuple[int, str]:
    body = document if isinstance(document, str) else json.dumps(document)
    with stack.orthanc("EDGE_A") as edge:
        response = edge.put("/imaging-cloud/rules", content=body)
    return response.status_code, response.text


def current_rules(stack: StackClient) -> dict:
    with stack.orthanc("EDGE_A") as edge:
        return edge.get("/imaging-cloud/rules").json()


# Fresh studies per run, so a rerun against a reused stack (STACK_ENV) proves the same.
RUN = random.randrange(10_000, 90_000) * 10  # noqa: S311 - not a secret


def send(stack: StackClient, seed: int) -> str:
    study = make_study(RUN + seed % 10, "DX", institution_code=stack["EDGE_A_INSTITUTION"])
    result = stack.send_to_edge("A", study.instances())
    assert result.ok
    return study.exam.study_instance_uid


def test_rules_replaced_at_runtime_and_enforced(stack: StackClient) -> None:
    base = current_rules(stack)["version"]
    # An invalid document is refused with its reason; the rules in force do not change.
    code, text = put_rules(stack, {"version": base + 1, "compression": "zip"})
    assert code == 400 and "compression" in text and f"version {base} stays" in text
    code, text = put_rules(stack, "{not json")
    assert code == 400
    assert current_rules(stack)["version"] == base

    # "keep": the next instance reaches central exactly as received (uncompressed).
    code, _ = put_rules(stack, {"version": base + 1, "compression": "keep"})
    assert code == 200 and current_rules(stack)["compression"] == "keep"
    uid = send(stack, 9101)
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = wait_for_instances(central, uid, 1, timeout_s=60)
        instance = central.get(f"/studies/{study_id}/instances").json()[0]
        raw = central.get(f"/instances/{instance['ID']}/file").content
    assert pydicom.dcmread(io.BytesIO(raw)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"

    # A forwarding window that excludes now: the study waits at the edge, queued.
    now = dt.datetime.now()
    closed = {
        "start": (now + dt.timedelta(hours=2)).strftime("%H:%M"),
        "end": (now + dt.timedelta(hours=3)).strftime("%H:%M"),
    }
    code, _ = put_rules(stack, {"version": base + 2, "forward_windows": [closed]})
    assert code == 200
    waiting = send(stack, 9102)
    time.sleep(8)  # longer than the edge's stable age and a worker cycle
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        assert find_study(central, waiting) is None
    with stack.orthanc("EDGE_A") as edge:
        status = edge.get("/imaging-cloud/status").json()
    assert status["forwarding_now"] is False and status["queue_depth"] >= 1

    # The window opens (no windows: always): the waiting study goes.
    code, _ = put_rules(stack, {"version": base + 3})
    assert code == 200 and current_rules(stack)["compression"] == "jpeg-ls-lossless"
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(central, waiting, 1, timeout_s=60)
