"""Studies coming back to hospitals: cross-hospital push A -> B (跨院推送), fetch back from
the cloud (回溯), and pulls from the hospital PACS by C-FIND/C-MOVE, on request and on a
schedule. Each hospital's PACS is a pynetdicom stand-in on the port its edge knows."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest

from deploy.samples.pacs import HospitalPacs, PacsTls
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study, wait_for_instances

from ..support.eventually import eventually
from .test_edge_resilience import forwarding_state

# Fresh studies per run, so a rerun against a reused stack (STACK_ENV) proves the same.
RUN = random.randrange(10_000, 90_000) * 10  # noqa: S311 - not a secret


def pacs_for(stack: StackClient, letter: str) -> HospitalPacs:
    """The hospital's PACS stand-in: mutual TLS only, its C-MOVEs to the edge's TLS port."""
    edge_aet = stack[f"EDGE_{letter}_AET"]
    return HospitalPacs(
        aet=stack[f"EDGE_{letter}_PACS_AET"],
        port=int(stack[f"EDGE_{letter}_PACS_PORT"]),
        destinations={edge_aet: ("127.0.0.1", int(stack[f"EDGE_{letter}_DICOM_TLS_PORT"]))},
        tls=PacsTls(stack["CA_CERT"], stack["PACS_TLS_CERT"], stack["PACS_TLS_KEY"]),
    )


@pytest.fixture(scope="module")
def pacs_a(stack: StackClient) -> Iterator[HospitalPacs]:
    with pacs_for(stack, "A") as pacs:
        yield pacs


@pytest.fixture(scope="module")
def pacs_b(stack: StackClient) -> Iterator[HospitalPacs]:
    with pacs_for(stack, "B") as pacs:
        yield pacs


def delivered_to_central(stack: StackClient, study: SampleStudy) -> None:
    result = stack.send_to_edge("A", study.instances())
    assert result.ok and result.sent == study.exam.instance_count, result.failed
    eventually(
        lambda: (
            (forwarding_state(stack, study.exam.study_instance_uid) or {}).get("state")
            == "delivered"
        ),
        what="the study delivered to central",
        timeout=180,
    )


def assert_same_pixels(received: list[pydicom.Dataset], study: SampleStudy) -> None:
    originals = {str(d.SOPInstanceUID): d for d in study.instances()}
    assert {str(d.SOPInstanceUID) for d in received} == set(originals)
    for ds in received[:4]:
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)


def job_outcome(edge: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    def finished() -> dict | None:
        job = edge.get(f"/imaging-cloud/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed") else None

    return eventually(finished, what=f"job {job_id} finished", timeout=timeout_s, interval=0.5)


def test_push_from_a_reaches_b_pacs_and_both_see_its_state(
    stack: StackClient, pacs_b: HospitalPacs
) -> None:
    study = make_study(RUN + 1, "CT", instances=8, institution_code=stack["EDGE_A_INSTITUTION"])
    delivered_to_central(stack, study)
    uid = study.exam.study_instance_uid
    radiologist_b = stack.password_token(
        stack["DEMO_RADIOLOGIST_B_USER"], stack["DEMO_RADIOLOGIST_B_PASSWORD"]
    )["access_token"]
    metadata = f"/dicom-web/studies/{uid}/metadata"
    with stack.gateway(radiologist_b) as viewer_b:
        assert viewer_b.get(metadata).status_code == 403  # not B's study, not shared yet
    with stack.orthanc("EDGE_A") as edge_a:
        answer = edge_a.post(
            "/imaging-cloud/pushes",
            json={"study_instance_uid": uid, "to_institution": stack["EDGE_B_INSTITUTION"]},
        )
        assert answer.status_code == 200, answer.text
        push = answer.json()
        assert push["state"] == "pending" and push["from_institution"] == "H0001"
        # asking twice while it is open gives the same push, not a second delivery
        again = edge_a.post(
            "/imaging-cloud/pushes",
            json={"study_instance_uid": uid, "to_institution": stack["EDGE_B_INSTITUTION"]},
        ).json()
        assert again["push_id"] == push["push_id"]

        def delivered() -> dict | None:
            state = edge_a.get(f"/imaging-cloud/pushes/{push['push_id']}").json()
            return state if state["state"] == "delivered" else None

        final = eventually(delivered, what="the push delivered", timeout=120, interval=1)
    assert final["instances"] == 8
    with stack.orthanc("EDGE_B") as edge_b:
        seen_by_b = edge_b.get(f"/imaging-cloud/pushes/{push['push_id']}").json()
        assert seen_by_b["state"] == "delivered"
        assert find_study(edge_b, uid) is not None
    received = [d for d in pacs_b.received if str(d.StudyInstanceUID) == uid]
    assert len(received) == 8
    assert_same_pixels(received, study)
    # the push also lets hospital B's staff read the study in the cloud viewer
    with stack.gateway(radiologist_b) as viewer_b:
        shared = viewer_b.get(metadata, headers={"Accept": "application/dicom+json"})
    assert shared.status_code == 200 and len(shared.json()) == 8


def test_fetch_back_restores_an_evicted_study_and_delivers_it_to_the_pacs(
    stack: StackClient, pacs_a: HospitalPacs
) -> None:
    study = make_study(RUN + 2, "MR", instances=6, institution_code=stack["EDGE_A_INSTITUTION"])
    delivered_to_central(stack, study)
    uid = study.exam.study_instance_uid
    sent_before = forwarding_state(stack, uid)["bytes_sent"]  # type: ignore[index]
    with stack.orthanc("EDGE_A") as edge:
        local_id = find_study(edge, uid)
        assert edge.delete(f"/studies/{local_id}").status_code == 200  # evicted from the cache
        assert find_study(edge, uid) is None
        answer = edge.post(
            "/imaging-cloud/retrievals", json={"study_instance_uid": uid, "deliver_to": "HOSP_PACS"}
        )
        assert answer.status_code == 200, answer.text
        job = job_outcome(edge, answer.json()["job_id"])
        assert job["state"] == "done", job
        assert job["result"] == {"instances": 6, "fetched": 6, "delivered_to": "HOSP_PACS"}
        wait_for_instances(edge, uid, 6, timeout_s=10)
    received = [d for d in pacs_a.received if str(d.StudyInstanceUID) == uid]
    assert_same_pixels(received, study)
    # the study stabilises on the edge again and is re-checked with central: nothing resent

    def reconfirmed() -> bool:
        state = forwarding_state(stack, uid) or {}
        return state.get("state") == "delivered" and state["updated_at"] > job["updated_at"]

    eventually(
        reconfirmed,
        what="the fetched study re-confirmed",
        timeout=60,
    )
    assert forwarding_state(stack, uid)["bytes_sent"] == sent_before  # type: ignore[index]


def test_pacs_c_move_of_a_study_only_the_cloud_holds_fetches_it_back(
    stack: StackClient, pacs_a: HospitalPacs
) -> None:
    study = make_study(RUN + 5, "CT", instances=4, institution_code=stack["EDGE_A_INSTITUTION"])
    delivered_to_central(stack, study)
    uid = study.exam.study_instance_uid
    with stack.orthanc("EDGE_A") as edge:
        assert edge.delete(f"/studies/{find_study(edge, uid)}").status_code == 200
    # the hospital PACS asks the edge, as it would ask any DICOM node, to send it the study
    status = pacs_a.move(
        "127.0.0.1",
        int(stack["EDGE_A_DICOM_TLS_PORT"]),
        stack["EDGE_A_AET"],
        uid,
        destination=stack["EDGE_A_PACS_AET"],
    )
    assert status == 0x0000
    received = [d for d in pacs_a.received if str(d.StudyInstanceUID) == uid]
    assert len(received) == 4
    assert_same_pixels(received, study)
    # a study neither here nor in the cloud fails the C-MOVE, and the edge keeps serving
    missing = pacs_a.move(
        "127.0.0.1",
        int(stack["EDGE_A_DICOM_TLS_PORT"]),
        stack["EDGE_A_AET"],
        "1.2.3.4.5.6.7.8.9",
        destination=stack["EDGE_A_PACS_AET"],
    )
    assert missing != 0x0000
    with stack.orthanc("EDGE_A") as edge:
        assert edge.get("/imaging-cloud/status").status_code == 200


def test_pull_from_the_pacs_on_request_then_forwarded(
    stack: StackClient, pacs_a: HospitalPacs
) -> None:
    study = make_study(RUN + 3, "DX", instances=2, institution_code=stack["EDGE_A_INSTITUTION"])
    pacs_a.add(study.instances())
    uid = study.exam.study_instance_uid
    with stack.orthanc("EDGE_A") as edge:
        answer = edge.post(
            "/imaging-cloud/pacs-pulls",
            json={"source_aet": "HOSP_PACS", "study_instance_uid": uid},
        )
        assert answer.status_code == 200, answer.text
        job = job_outcome(edge, answer.json()["job_id"])
        assert job["state"] == "done", job
        assert job["result"] == {"found": 1, "retrieved": 1, "already_here": 0}
        wait_for_instances(edge, uid, 2, timeout_s=10)
        # asked again: the study is complete here, nothing is moved twice
        again = edge.post(
            "/imaging-cloud/pacs-pulls",
            json={"source_aet": "HOSP_PACS", "study_instance_uid": uid},
        ).json()
        assert job_outcome(edge, again["job_id"])["result"]["already_here"] == 1
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(central, uid, 2, timeout_s=120)


def test_scheduled_pull_brings_todays_studies(stack: StackClient, pacs_a: HospitalPacs) -> None:
    study = make_study(
        RUN + 4,
        "CT",
        instances=3,
        institution_code=stack["EDGE_A_INSTITUTION"],
        today=dt.date.today(),
    )
    pacs_a.add(study.instances())
    with stack.orthanc("EDGE_A") as edge:
        current = edge.get("/imaging-cloud/rules").json()
        rules = current | {
            "version": current["version"] + 1,
            "pacs_pulls": [
                {
                    "name": f"today-ct-{RUN}",
                    "source_aet": "HOSP_PACS",
                    "every_minutes": 10,
                    "modalities": ["CT"],
                    "days_back": 0,
                }
            ],
        }
        assert edge.put("/imaging-cloud/rules", json=rules).status_code == 200
        try:
            wait_for_instances(edge, study.exam.study_instance_uid, 3, timeout_s=60)
        finally:
            rules = rules | {"version": rules["version"] + 1, "pacs_pulls": []}
            assert edge.put("/imaging-cloud/rules", json=rules).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/imaging-cloud/retrievals", {"study_instance_uid": "not-a-uid"}, 422, "pattern"),
        (
            "/imaging-cloud/retrievals",
            {"study_instance_uid": "1.2.3", "deliver_to": "NOWHERE"},
            422,
            "not configured on this edge: NOWHERE",
        ),
        ("/imaging-cloud/pacs-pulls", {"source_aet": "HOSP_PACS"}, 422, "at least one of"),
        (
            "/imaging-cloud/pushes",
            {"study_instance_uid": "1.2.3.999", "to_institution": "H0002"},
            404,
            "not in the central archive",
        ),
        (
            "/imaging-cloud/pushes",
            {"study_instance_uid": "1.2.3", "to_institution": "H0001"},
            422,
            "must differ",
        ),
        ("/imaging-cloud/pushes", {"study_instance_uid": "1.2.3"}, 422, "to_institution"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(
    stack: StackClient, path: str, body: dict, status: int, message: str
) -> None:
    with stack.orthanc("EDGE_A") as edge:
        answer = edge.post(path, json=body)
        assert answer.status_code == status, answer.text
        assert message in answer.text
        assert edge.get("/imaging-cloud/status").status_code == 200


def test_a_fetch_of_a_study_the_cloud_lacks_fails_with_the_reason(stack: StackClient) -> None:
    with stack.orthanc("EDGE_B") as edge:
        answer = edge.post("/imaging-cloud/retrievals", json={"study_instance_uid": "1.2.3.4.5"})
        job_id = answer.json()["job_id"]
        job = edge.get(f"/imaging-cloud/jobs/{job_id}").json()
        assert job["kind"] == "fetch" and job["state"] in ("queued", "running")
        first_error = eventually(
            lambda: edge.get(f"/imaging-cloud/jobs/{job_id}").json()["last_error"],
            what="the first attempt's error",
            timeout=30,
        )
        assert "not in the central archive" in first_error
