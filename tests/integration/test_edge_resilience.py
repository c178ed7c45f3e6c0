"""Forwarding survives an edge crash and a central outage: nothing lost, nothing twice."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import kill_service, load_context, start_service, stop_service
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from .fresh import fresh_seed

CENTRAL_OUTAGE_S = 120


def send_to_edge_a(stack: StackClient, study: SampleStudy) -> None:
    result = stack.send_to_edge("A", study.instances())
    assert result.ok and result.sent == study.exam.instance_count, result.failed


def forwarding_state(stack: StackClient, study_uid: str) -> dict | None:
    with stack.orthanc("EDGE_A") as edge:
        study_id = find_study(edge, study_uid)
        if study_id is None:
            return None
        response = edge.get(f"/imaging-cloud/studies/{study_id}/forwarding")
    return response.json() if response.status_code == 200 else None


def central_sop_uids(stack: StackClient, study_uid: str) -> list[str]:
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = find_study(central, study_uid)
        if study_id is None:
            return []
        found = central.get(f"/studies/{study_id}/instances").json()
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in found]


def assert_exactly_once_and_intact(stack: StackClient, study: SampleStudy) -> None:
    uids = central_sop_uids(stack, study.exam.study_instance_uid)
    assert len(uids) == study.exam.instance_count  # nothing duplicated...
    assert set(uids) == set(study.sop_instance_uids)  # ...nothing lost
    originals = {str(d.SOPInstanceUID): d for d in study.instances()}
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = find_study(central, study.exam.study_instance_uid)
        for item in central.get(f"/studies/{study_id}/instances").json()[:5]:
            raw = central.get(f"/instances/{item['ID']}/file").content
            got = pydicom.dcmread(__import__("io").BytesIO(raw))
            assert np.array_equal(got.pixel_array, originals[got.SOPInstanceUID].pixel_array)


@pytest.fixture
def ctx(stack_settings: StackSettings):
    return load_context(stack_settings)


def put_rules(stack: StackClient, **changes: object) -> None:
    with stack.orthanc("EDGE_A") as edge:
        rules = edge.get("/imaging-cloud/rules").json()
        rules = rules | changes | {"version": rules["version"] + 1}
        answer = edge.put("/imaging-cloud/rules", json=rules)
        assert answer.status_code == 200, answer.text


def test_edge_killed_mid_forward_resumes_without_loss_or_duplicates(
    stack: StackClient, ctx
) -> None:
    study = make_study(
        fresh_seed(), "CT", instances=100, institution_code=stack["EDGE_A_INSTITUTION"]
    )
    uid = study.exam.study_instance_uid
    # Hold the study at the edge, then let it go at 10 Mbit/s (~12 s for ~14 MB), so
    # the kill lands while instances are on their way, not before nor after.
    put_rules(stack, forwarding_enabled=False)
    try:
        send_to_edge_a(stack, study)
        put_rules(stack, forwarding_enabled=True, bandwidth_limit_mbps=10)
        eventually(
            lambda: len(central_sop_uids(stack, uid)) >= 10,
            timeout=60,
            what="the first instances to reach central",
            interval=0.1,
        )
        assert forwarding_state(stack, uid)["state"] == "sending"  # type: ignore[index]
        kill_service(ctx, "edge-a")
        arrived_before_restart = len(central_sop_uids(stack, uid))
        start_service(ctx, "edge-a")  # the rules (and the limit) survive the restart...
    finally:
        put_rules(stack, forwarding_enabled=True, bandwidth_limit_mbps=None)  # ...until lifted
    assert 10 <= arrived_before_restart < 100  # really killed mid-forward
    final = eventually(
        lambda: (s := forwarding_state(stack, uid)) and s["state"] == "delivered" and s,
        timeout=180,
        what="the study to be delivered after the restart",
    )
    assert isinstance(final, dict) and final["instances"] == 100
    assert_exactly_once_and_intact(stack, study)


def test_central_outage_during_forwarding_delivers_exactly_once(stack: StackClient, ctx) -> None:
    study = make_study(
        fresh_seed(), "CT", instances=30, institution_code=stack["EDGE_A_INSTITUTION"]
    )
    uid = study.exam.study_instance_uid
    stop_service(ctx, "central")
    try:
        send_to_edge_a(stack, study)
        failed = eventually(
            lambda: (s := forwarding_state(stack, uid)) and s["state"] == "failed" and s,
            timeout=60,
            what="the edge to report the failed attempt",
        )
        assert isinstance(failed, dict) and failed["last_error"]
        time.sleep(CENTRAL_OUTAGE_S)
        with stack.orthanc("EDGE_A") as edge:
            counters = edge.get("/imaging-cloud/status").json()
        assert counters["queue_depth"] >= 1 and counters["failing"] >= 1
    finally:
        start_service(ctx, "central")
    eventually(
        lambda: (s := forwarding_state(stack, uid)) and s["state"] == "delivered",
        timeout=120,
        what="delivery once central is back",
    )
    assert_exactly_once_and_intact(stack, study)
