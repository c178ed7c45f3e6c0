"""DICOMweb through the gateway needs a Keycloak token that may read the study: nginx asks
the indexer (auth_request) before central sees the request."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient

from ..support.eventually import eventually
from ..support.master_index import master_index_of
from .fresh import fresh_seed

DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def study_of_a(stack: StackClient, tokens: dict[str, str]) -> Iterator[SampleStudy]:
    """A study sent to hospital A's edge; the edge reports it to the indexer itself."""
    study = make_study(fresh_seed(), "DX", instances=1, institution_code="H0001")
    assert stack.send_to_edge("A", study.instances()).ok
    path = f"/dicom-web/studies/{study.exam.study_instance_uid}/metadata"
    with stack.gateway(tokens["rad_a"]) as gw:
        eventually(
            lambda: gw.get(path, headers=DICOM_JSON).status_code == 200,
            what="the study readable through the gateway",
            timeout=90,
            interval=0.5,
        )
    yield study


def get(stack: StackClient, token: str | None, path: str, **params: str) -> httpx.Response:
    with stack.gateway(token) as gw:
        return gw.get(path, params=params, headers=DICOM_JSON)


def test_no_token_or_a_forged_one_is_401(stack: StackClient, study_of_a: SampleStudy) -> None:
    metadata = f"/dicom-web/studies/{study_of_a.exam.study_instance_uid}/metadata"
    assert get(stack, None, metadata).status_code == 401
    assert get(stack, None, "/dicom-web/studies").status_code == 401
    assert get(stack, "abc.def.ghi", metadata).status_code == 401


def test_staff_read_their_own_institutions_study(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    uid = study_of_a.exam.study_instance_uid
    metadata = get(stack, tokens["rad_a"], f"/dicom-web/studies/{uid}/metadata")
    assert metadata.status_code == 200 and metadata.json()[0]["0020000D"]["Value"] == [uid]
    qido = get(stack, tokens["rad_a"], "/dicom-web/studies", StudyInstanceUID=uid)
    assert qido.status_code == 200 and len(qido.json()) == 1


def test_other_institutions_studies_get_the_same_403_as_unknown_ones(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    uid = study_of_a.exam.study_instance_uid
    theirs = get(stack, tokens["rad_b"], f"/dicom-web/studies/{uid}/metadata")
    unknown = get(stack, tokens["rad_b"], "/dicom-web/studies/1.2.3.4.5.6.7/metadata")
    assert theirs.status_code == unknown.status_code == 403
    assert theirs.text == unknown.text  # nothing tells whether the study exists
    frames = f"/dicom-web/studies/{uid}/series/1.2.3/instances/1.2.3.4/frames/1"
    assert get(stack, tokens["rad_b"], frames).status_code == 403


def study_uids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [study["0020000D"]["Value"][0] for study in answer.json()]


def test_study_searches_hold_only_what_the_caller_may_read(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    uid = study_of_a.exam.study_instance_uid
    patient = study_of_a.patient.mrn
    # the worklist (no filter) and a search by patient ID or by UID
    assert uid in study_uids(get(stack, tokens["rad_a"], "/dicom-web/studies", limit="500"))
    assert study_uids(get(stack, tokens["rad_a"], "/dicom-web/studies", PatientID=patient)) == [uid]
    assert uid not in study_uids(get(stack, tokens["rad_b"], "/dicom-web/studies", limit="500"))
    assert study_uids(get(stack, tokens["rad_b"], "/dicom-web/studies", PatientID=patient)) == []
    assert study_uids(get(stack, tokens["rad_b"], "/dicom-web/studies", StudyInstanceUID=uid)) == []
    # administrators see the whole archive; auditors read the audit trail, not images
    assert uid in study_uids(
        get(stack, tokens["admin"], "/dicom-web/studies", StudyInstanceUID=uid)
    )
    assert get(stack, tokens["auditor"], "/dicom-web/studies").status_code == 403
    assert get(stack, None, "/dicom-web/studies").status_code == 401
    bad = get(stack, tokens["rad_a"], "/dicom-web/studies", limit="many")
    assert bad.status_code == 422 and "limit" in bad.text


def test_platform_admin_reads_and_staff_cannot_store(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    assert get(stack, tokens["admin"], "/dicom-web/studies", limit="5").status_code == 200
    with stack.gateway(tokens["rad_a"]) as gw:
        stow = gw.post(
            "/dicom-web/studies",
            content=b"--x--",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        )
    assert stow.status_code == 403


def test_the_authorisation_endpoint_is_not_reachable_from_outside(
    stack: StackClient, tokens: dict[str, str]
) -> None:
    assert get(stack, tokens["admin"], "/api/v1/authz/dicomweb").status_code == 404


def test_mutual_recognition_lookup_with_a_purpose_opens_the_images_for_a_day(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    from deploy.samples.records import exam_record, patient_record

    uid = study_of_a.exam.study_instance_uid
    base = "/api/v1/institutions/H0001"
    with stack.gateway(tokens["admin"]) as api:  # hospital A registers the exam (RIS)
        api.put(f"{base}/patients/{study_of_a.patient.mrn}", json=patient_record(study_of_a))
        api.put(f"{base}/exams/{study_of_a.exam.exam_no}", json=exam_record(study_of_a))
        master = master_index_of(api, study_of_a)
        exam = api.get(f"{base}/exams/{study_of_a.exam.exam_no}").json()
    assert exam["master_index_id"] == master and exam["study_instance_uid"] == uid
    metadata = f"/dicom-web/studies/{uid}/metadata"
    assert get(stack, tokens["rad_b"], metadata).status_code == 403
    with stack.gateway(tokens["rad_b"]) as clinician_b:
        silent = clinician_b.get(f"/api/v1/master-index/{master}")
        assert silent.status_code == 403 and "purpose" in silent.text
        stated = clinician_b.get(
            f"/api/v1/master-index/{master}", params={"purpose": "复诊对比 follow-up"}
        )
        assert stated.status_code == 200, stated.text
        assert stated.json()["exam"]["links"]["metadata"].endswith(metadata)
    assert get(stack, tokens["rad_b"], metadata).status_code == 200


def test_a_grant_opens_a_study_until_its_owner_revokes_it(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    uid = study_of_a.exam.study_instance_uid
    metadata = f"/dicom-web/studies/{uid}/metadata"
    grants = f"/api/v1/institutions/H0001/studies/{uid}/grants"
    with stack.gateway(tokens["admin"]) as owner:
        granted = owner.post(grants, json={"to_institution": "H0002", "kind": "consent"})
        assert granted.status_code == 200, granted.text
        assert get(stack, tokens["rad_b"], metadata).status_code == 200
        revoked = owner.delete(f"{grants}/{granted.json()['id']}")
        assert revoked.status_code == 200
    # the study's own staff list its grants; the others (an earlier 互认 lookup) are
    # revoked too, to see the effect
    with stack.gateway(tokens["rad_a"]) as staff_of_owner:
        listed = staff_of_owner.get(grants).json()
    assert {g["kind"] for g in listed} >= {"consent", "mutual-recognition"}
    assert next(g for g in listed if g["id"] == granted.json()["id"])["revoked_at"]
    with stack.gateway(tokens["admin"]) as owner:
        for grant in listed:
            owner.delete(f"{grants}/{grant['id']}")
    assert get(stack, tokens["rad_b"], metadata).status_code == 403
    with stack.gateway(tokens["rad_b"]) as other:  # nor does another hospital see them
        assert other.get(grants).status_code == 403
    with stack.gateway(tokens["rad_b"]) as other:  # only the owner's side revokes
        assert other.delete(f"{grants}/{granted.json()['id']}").status_code == 403


def raw_status(stack: StackClient, token: str, target: str) -> int:
    """The status of a request line sent as is (HTTP clients drop a '#' and what follows)."""
    host, port = urlsplit(stack["GATEWAY_URL"]).hostname, urlsplit(stack["GATEWAY_URL"]).port
    assert host and port
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    )
    with (
        socket.create_connection((host, port), timeout=30) as plain,
        stack.ca_context().wrap_socket(plain, server_hostname=host) as tls,
    ):
        tls.sendall(request.encode())
        status_line = tls.recv(200).split(b"\r\n")[0]
    return int(status_line.split()[1])


def test_a_fragment_in_the_request_line_is_refused(
    stack: StackClient, tokens: dict[str, str], study_of_a: SampleStudy
) -> None:
    """nginx matches the path before a '#', Orthanc's server reads past it: such a request
    naming A's study could otherwise reach another study at central."""
    uid = study_of_a.exam.study_instance_uid
    target = f"/dicom-web/studies/{uid}#/../../studies/1.2.3.4.5/metadata"
    assert raw_status(stack, tokens["rad_a"], target) == 400
    assert raw_status(stack, tokens["admin"], "/orthanc/system#x") == 400
