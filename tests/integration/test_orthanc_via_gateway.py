"""Central Orthanc's REST API through the gateway: platform administrators, and hospital
gateway accounts for exactly the calls their edge makes; the edges forward that way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study, wait_for_instances

from .fresh import fresh_seed
from .test_dicomweb_authz import study_of_a  # noqa: F401 - the fixture
from .test_edge_retrieval import delivered_to_central


def gateway_token(stack: StackClient, institution: str) -> str:
    return stack.gateway_account_token(institution)


def user_token(stack: StackClient, who: str) -> str:
    return str(
        stack.password_token(stack[f"DEMO_{who}_USER"], stack[f"DEMO_{who}_PASSWORD"])[
            "access_token"
        ]
    )


def test_the_edges_reach_central_through_the_gateway(stack: StackClient) -> None:
    """Edge A's peer is central behind the gateway, and that URL, with hospital A's gateway
    account, answers what only central knows: a study it holds and its SHA-256 registry."""
    config = json.loads((Path(stack["STACK_DIR"]) / "edge-a" / "orthanc.json").read_text())
    peer = config["OrthancPeers"]["central"]
    assert peer["Url"] == f"{stack['GATEWAY_URL']}/orthanc/" and "Password" not in peer
    study = make_study(fresh_seed(), "CT", instances=2, institution_code="H0001")
    delivered_to_central(stack, study)
    uid = study.exam.study_instance_uid
    with stack.orthanc("CENTRAL_ORTHANC") as central:  # central's own answer, not through nginx
        study_id = find_study(central, uid)
        listed = central.get(f"/studies/{study_id}/instances").json()
        stored = {
            i["MainDicomTags"]["SOPInstanceUID"]: hashlib.sha256(
                central.get(f"/instances/{i['ID']}/file").content
            ).hexdigest()
            for i in listed
        }
    assert len(stored) == 2
    as_edge_a = {"Authorization": f"Bearer {gateway_token(stack, 'H0001')}"}
    with httpx.Client(
        base_url=peer["Url"], verify=stack.ca_context(), headers=as_edge_a, timeout=30
    ) as edge_way:
        found = edge_way.post("tools/lookup", content=uid)
        assert found.status_code == 200, found.text
        assert [(r["Type"], r["ID"]) for r in found.json()] == [("Study", study_id)]
        instances = edge_way.get(f"studies/{study_id}/instances")
        assert instances.status_code == 200, instances.text
        assert sorted(i["ID"] for i in instances.json()) == sorted(i["ID"] for i in listed)
        # what the edge asks before it lets a study go: central's hash registry answers
        verified = edge_way.post("imaging-cloud/verify", json={"instances": stored})
    assert verified.status_code == 200, verified.text
    answer = verified.json()
    assert sorted(answer["confirmed"]) == sorted(stored)
    assert answer["missing"] == [] and answer["mismatched"] == []


def test_who_may_call_central_rest(stack: StackClient) -> None:
    with stack.gateway() as anonymous:
        assert anonymous.get("/orthanc/system").status_code == 401
    with stack.gateway(user_token(stack, "ADMIN")) as admin:
        assert admin.get("/orthanc/system").status_code == 200
    with stack.gateway(user_token(stack, "RADIOLOGIST_A")) as radiologist:
        assert radiologist.get("/orthanc/system").status_code == 403
        assert radiologist.post("/orthanc/tools/lookup", content="1.2.3").status_code == 403
    with stack.gateway(gateway_token(stack, "H0001")) as edge:
        assert edge.post("/orthanc/tools/lookup", content="1.2.3").status_code == 200
        assert edge.get("/orthanc/system").status_code == 403  # not an edge's call
        assert edge.delete("/orthanc/studies/0" * 1).status_code == 403
        assert edge.get("/orthanc/app/explorer.html").status_code == 403


def test_a_hospital_gateway_reads_only_studies_its_hospital_may_read(
    stack: StackClient,
    study_of_a: SampleStudy,  # noqa: F811
) -> None:
    """Hospital B's edge cannot fetch hospital A's files from central until A shares them."""
    uid = study_of_a.exam.study_instance_uid
    with stack.gateway(gateway_token(stack, "H0001")) as edge_a:
        study_id = next(i["ID"] for i in edge_a.post("/orthanc/tools/lookup", content=uid).json())
        listed = edge_a.get(f"/orthanc/studies/{study_id}/instances")
        assert listed.status_code == 200
        instance_id = listed.json()[0]["ID"]
        assert edge_a.get(f"/orthanc/instances/{instance_id}/file").status_code == 200
        assert (
            edge_a.get("/orthanc/imaging-cloud/pushes", params={"to": "H0001"}).status_code == 200
        )
        assert (
            edge_a.get("/orthanc/imaging-cloud/pushes", params={"to": "H0002"}).status_code == 403
        )
    with stack.gateway(gateway_token(stack, "H0002")) as edge_b:
        assert edge_b.get(f"/orthanc/studies/{study_id}/instances").status_code == 403
        assert edge_b.get(f"/orthanc/instances/{instance_id}/file").status_code == 403
        with stack.gateway(gateway_token(stack, "H0001")) as edge_a:  # A pushes: a grant
            granted = edge_a.post(
                f"/api/v1/institutions/H0001/studies/{uid}/grants",
                json={"to_institution": "H0002", "kind": "push"},
            )
            assert granted.status_code == 200, granted.text
        assert edge_b.get(f"/orthanc/instances/{instance_id}/file").status_code == 200


def test_a_hospital_gateway_cannot_discard_or_probe_another_hospitals_instances(
    stack: StackClient,
    study_of_a: SampleStudy,  # noqa: F811 - shared with B by the test above
) -> None:
    """Central discards a copy whose hash does not match (so the edge can resend it): only
    in the caller's own studies. Of a study it may not read a gateway learns nothing; of a
    study shared with it, that the copy differs, and the copy stays."""
    unshared = make_study(fresh_seed(), "DX", instances=1, institution_code="H0001")
    assert stack.send_to_edge("A", unshared.instances()).ok
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(central, unshared.exam.study_instance_uid, 1)
    hidden = str(next(unshared.instances()).SOPInstanceUID)
    shared = str(next(study_of_a.instances()).SOPInstanceUID)
    wrong = {"instances": {hidden: "0" * 64, shared: "0" * 64}}
    with stack.gateway(gateway_token(stack, "H0002")) as edge_b:
        answer = edge_b.post("/orthanc/imaging-cloud/verify", json=wrong)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"confirmed": [], "missing": [hidden], "mismatched": [shared]}
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        for sop in (hidden, shared):  # neither was discarded
            found = central.post("/tools/lookup", content=sop).json()
            assert [item["Type"] for item in found] == ["Instance"]
    # (its own hospital's mismatches are discarded and resent: test_edge_transit_corruption)


def test_a_hospital_gateway_speaks_only_for_its_own_hospital_in_pushes(
    stack: StackClient,
    study_of_a: SampleStudy,  # noqa: F811
) -> None:
    uid = study_of_a.exam.study_instance_uid
    forged = {"study_instance_uid": uid, "from_institution": "H0001", "to_institution": "H0002"}
    with stack.gateway(gateway_token(stack, "H0002")) as edge_b:
        assert edge_b.post("/orthanc/imaging-cloud/pushes", json=forged).status_code == 403
        mine = forged | {"from_institution": "H0002", "to_institution": "H0001"}
        assert edge_b.post("/orthanc/imaging-cloud/pushes", json=mine).status_code == 403
        state = f"/orthanc/imaging-cloud/pushes/{'0' * 8}-0000-0000-0000-{'0' * 12}/state"
        report = {"institution": "H0001", "state": "delivered"}
        assert edge_b.post(state, json=report).status_code == 403
        # its own hospital's report on an unknown push: central's own answer
        assert edge_b.post(state, json=report | {"institution": "H0002"}).status_code == 404
