"""Issue #18, holes 1, 3 and 8, against the real stack through the gateway:
- a hospital's gateway cannot add an image to another hospital's study with a file whose
  identifying elements are ambiguous (two StudyInstanceUIDs: Orthanc keeps the first);
- one live grant per study, grantee and kind, however many creators race; revoking it
  ends the access at once;
- the masked national ID answered beside the birth date does not give the number back."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient
from indexer.services import ingest, national_id
from tests.raw_dicom import (
    deflate_bomb,
    part10,
    ui_element,
    unknown_vr_polyglot,
    with_study_uid_first,
)

from ..support.eventually import eventually
from ..support.master_index import master_index_of
from .fresh import fresh_seed

A, B = "H0001", "H0002"
DICOM = {"Content-Type": "application/dicom"}


@dataclass
class StudyOfA:
    ds: Dataset
    uid: str
    orthanc_study: str
    orthanc_instance: str


@pytest.fixture(scope="module")
def study_of_a(gw: dict[str, httpx.Client]) -> StudyOfA:
    """One instance of a study of hospital A, uploaded by A's gateway and known to the
    indexer as A's (the arrival its edge reports)."""
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    ds = next(study.instances())
    stored = gw[A].post("/orthanc/instances", content=part10(ds), headers=DICOM)
    assert stored.status_code == 200, stored.text
    uid = study.exam.study_instance_uid
    arrival = {
        "study_instance_uid": uid,
        "accession_number": study.exam.exam_no,
        "modalities": ["DX"],
        "series_count": 1,
        "instance_count": 1,
        "complete": True,
    }
    answer = gw[A].post(f"/api/v1/institutions/{A}/studies", json=arrival)
    assert answer.status_code == 200, answer.text
    return StudyOfA(ds, uid, stored.json()["ParentStudy"], stored.json()["ID"])


def instances_at_central(stack: StackClient, orthanc_study: str) -> list[str]:
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        return [i["ID"] for i in central.get(f"/studies/{orthanc_study}/instances").json()]


def another_instance(ds: Dataset, study_uid: str) -> Dataset:
    """A new instance (new SOP and series UIDs) of the same patient, in `study_uid`."""
    other = copy.deepcopy(ds)
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    other.SeriesInstanceUID = generate_uid()
    other.StudyInstanceUID = study_uid
    return other


def audit_events(stack: StackClient, since: str, match: Any, timeout_s: float = 10) -> list:
    """The audit rows since `since` for which `match` holds (rows are written in batches)."""
    token = stack.password_token(stack["DEMO_AUDITOR_USER"], stack["DEMO_AUDITOR_PASSWORD"])
    with stack.gateway(token["access_token"]) as auditor:

        def found() -> list:
            answer = auditor.get("/api/v1/audit", params={"since": since, "limit": 10000})
            assert answer.status_code == 200, answer.text
            return [e for e in answer.json()["events"] if match(e)]

        return eventually(found, what="the audit rows looked for", timeout=timeout_s)


# -- hole 1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("a_first", [True, False], ids=["A's UID first", "A's UID second"])
def test_a_second_study_uid_does_not_add_an_image_to_another_hospitals_study(
    stack: StackClient, gw: dict[str, httpx.Client], study_of_a: StudyOfA, a_first: bool
) -> None:
    """The red team's file: two (0020,000D) elements, A's study UID and a fresh one, sent by
    hospital B's gateway account. Orthanc reads the first, pydicom the last."""
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)).isoformat()
    before = instances_at_central(stack, study_of_a.orthanc_study)
    fresh = generate_uid()
    if a_first:
        attack = with_study_uid_first(another_instance(study_of_a.ds, fresh), study_of_a.uid)
    else:
        attack = with_study_uid_first(another_instance(study_of_a.ds, study_of_a.uid), fresh)
    answer = gw[B].post("/orthanc/instances", content=attack, headers=DICOM)
    assert answer.status_code == 400, answer.text
    assert "(0020,000D) out of order or repeated" in answer.text
    assert instances_at_central(stack, study_of_a.orthanc_study) == before
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        assert central.post("/tools/lookup", content=fresh).json() == []
    first = study_of_a.uid if a_first else fresh  # the study Orthanc would have put it in
    refused = audit_events(
        stack,
        since,
        lambda e: e["action"] == "orthanc.post" and e["resource"] == f"study:{first}",
    )
    assert refused and refused[-1]["outcome"] == 400


@pytest.mark.parametrize("flaw", ["series UID not valid", "meta SOP UID differs"])
def test_files_with_unclear_identity_are_refused(
    stack: StackClient, gw: dict[str, httpx.Client], study_of_a: StudyOfA, flaw: str
) -> None:
    ds = another_instance(study_of_a.ds, generate_uid())
    if flaw == "series UID not valid":
        ds.SeriesInstanceUID = "1.2.03.x"
        data = part10(ds)
    else:  # pydicom writes the data set's SOP UID into the meta: edit the bytes
        sop = str(ds.SOPInstanceUID)
        other = sop[:-1] + ("1" if sop[-1] != "1" else "2")  # same length, another UID
        data = part10(ds).replace(
            ui_element(0x0002, 0x0003, sop), ui_element(0x0002, 0x0003, other), 1
        )
        assert data != part10(ds)
    answer = gw[B].post("/orthanc/instances", content=data, headers=DICOM)
    assert answer.status_code == 400, answer.text
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        assert central.post("/tools/lookup", content=str(ds.StudyInstanceUID)).json() == []


def test_central_indexes_a_plain_upload_under_the_ids_the_check_computes(
    gw: dict[str, httpx.Client],
) -> None:
    """The fast path of the after-store check: Orthanc's IDs are the SHA-1s the check
    computes (else every upload costs three more calls to central)."""
    ds = next(make_study(fresh_seed(), "MR", instances=1, institution_code=B).instances())
    data = part10(ds)

    async def one_chunk() -> AsyncIterator[bytes]:
        yield data

    checked, _ = asyncio.run(ingest.split_header(one_chunk()))
    answer = gw[B].post("/orthanc/instances", content=data, headers=DICOM)
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert stored["Status"] == "Success"
    assert checked.orthanc_ids() == (stored["ID"], stored["ParentStudy"])


def test_an_unknown_vr_does_not_hide_another_hospitals_study_uid(
    stack: StackClient, gw: dict[str, httpx.Client], study_of_a: StudyOfA
) -> None:
    """The review's file: (0008,0001) of VR 'ZZ', whose length pydicom reads in 2 bytes
    and DCMTK in 4, so that DCMTK reads A's study UID hidden in the next element's value
    and the check a fresh one. Refused by the check itself, before central sees it (the
    after-store check is the second line, not the first)."""
    ds = another_instance(study_of_a.ds, generate_uid())
    attack = unknown_vr_polyglot(ds, study_of_a.uid)
    before = instances_at_central(stack, study_of_a.orthanc_study)
    answer = gw[B].post("/orthanc/instances", content=attack, headers=DICOM)
    assert answer.status_code == 400, answer.text
    assert instances_at_central(stack, study_of_a.orthanc_study) == before
    assert "(0008,0001) has VR 'ZZ', not standard" in answer.text


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_before_the_uids_are_stored_under_the_outer_study(
    gw: dict[str, httpx.Client], study_of_a: StudyOfA, syntax: str
) -> None:
    """Vendors write undefined-length sequences before SeriesInstanceUID; an item's own
    StudyInstanceUID (here A's) is not the instance's."""
    ds = next(make_study(fresh_seed(), "CT", instances=1, institution_code=B).instances())
    ref = Dataset()
    ref.StudyInstanceUID = study_of_a.uid
    ref.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedImageSequence = [ref]
    ds["ReferencedImageSequence"].is_undefined_length = True
    ref.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    answer = gw[B].post("/orthanc/instances", content=part10(ds), headers=DICOM)
    assert answer.status_code == 200, answer.text
    own = ingest.Identity(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID
    )
    assert (own.orthanc_ids() or ("", ""))[1] == answer.json()["ParentStudy"]


def test_a_deflate_bomb_gets_a_400_naming_the_limit(gw: dict[str, httpx.Client]) -> None:
    ds = next(make_study(fresh_seed(), "CT", instances=1, institution_code=B).instances())
    bomb = deflate_bomb(ds, 512)  # 512 MB inflated, about 500 kB on the wire
    answer = gw[B].post("/orthanc/instances", content=bomb, headers=DICOM, timeout=60)
    assert answer.status_code == 400, answer.text
    assert "4 MB" in answer.text


# -- hole 3 ---------------------------------------------------------------------------------


def b_reads(gw: dict[str, httpx.Client], study: StudyOfA) -> int:
    return gw[B].get(f"/orthanc/instances/{study.orthanc_instance}/file").status_code


@pytest.mark.parametrize("kind", ["push", "consent"])
def test_racing_identical_grants_make_one_and_revoking_it_ends_the_access(
    stack: StackClient,
    gw: dict[str, httpx.Client],
    tokens: dict[str, str],
    study_of_a: StudyOfA,
    kind: str,
) -> None:
    assert b_reads(gw, study_of_a) == 403
    path = f"/api/v1/institutions/{A}/studies/{study_of_a.uid}/grants"
    token = stack.gateway_account_token(A)

    def create(_: int) -> httpx.Response:
        with stack.gateway(token) as client:
            return client.post(path, json={"to_institution": B, "kind": kind})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(create, range(16)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with stack.gateway(tokens["hadmin_a"]) as admin_of_a:  # A's administrator looks
        listed = admin_of_a.get(path)
        assert listed.status_code == 200, listed.text
        live = [
            g
            for g in listed.json()
            if g["kind"] == kind and g["institution_code"] == B and g["revoked_at"] is None
        ]
        assert len(live) == 1, live
        assert b_reads(gw, study_of_a) == 200
        revoked = admin_of_a.delete(f"{path}/{live[0]['id']}")
        assert revoked.status_code == 200, revoked.text
    assert b_reads(gw, study_of_a) == 403  # at once


def test_a_second_grant_extends_the_live_one_to_the_later_expiry(
    gw: dict[str, httpx.Client], study_of_a: StudyOfA
) -> None:
    path = f"/api/v1/institutions/{A}/studies/{study_of_a.uid}/grants"
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).isoformat()
    sooner = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    first = gw[A].post(path, json={"to_institution": B, "kind": "consent", "expires_at": later})
    second = gw[A].post(path, json={"to_institution": B, "kind": "consent", "expires_at": sooner})
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["id"] == second.json()["id"]
    assert dt.datetime.fromisoformat(second.json()["expires_at"]) == dt.datetime.fromisoformat(
        later
    )
    assert gw[A].delete(f"{path}/{first.json()['id']}").status_code == 200


def test_repeated_break_glass_reuses_the_users_live_grant(
    stack: StackClient, tokens: dict[str, str], study_of_a: StudyOfA
) -> None:
    body = {"study_instance_uid": study_of_a.uid, "reason": "emergency: grant reuse test"}
    with stack.gateway(tokens["clin_b"]) as clinician:
        answers = [clinician.post("/api/v1/break-glass", json=body) for _ in range(2)]
    assert all(a.status_code == 200 for a in answers), answers[-1].text
    assert answers[0].json()["grant_id"] == answers[1].json()["grant_id"]
    assert answers[0].json()["alert_id"] != answers[1].json()["alert_id"]  # each use alerts


def test_repeated_mutual_recognition_lookups_keep_one_live_grant(
    stack: StackClient, gw: dict[str, httpx.Client], tokens: dict[str, str]
) -> None:
    """互认: each lookup of another hospital's exam with a purpose opens the study to the
    caller's hospital; repeated, concurrent lookups share one live grant."""
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    base = f"/api/v1/institutions/{A}"
    for path, record in (
        (f"{base}/patients/{study.patient.mrn}", patient_record(study)),
        (f"{base}/exams/{study.exam.exam_no}", exam_record(study)),
    ):
        assert gw[A].put(path, json=record).status_code == 200
    ds = next(study.instances())
    assert gw[A].post("/orthanc/instances", content=part10(ds), headers=DICOM).status_code == 200
    arrival = {
        "study_instance_uid": study.exam.study_instance_uid,
        "accession_number": study.exam.exam_no,
        "modalities": ["CT"],
        "series_count": 1,
        "instance_count": 1,
        "complete": True,
    }
    assert gw[A].post(f"{base}/studies", json=arrival).json()["linked_exam_no"]
    with stack.gateway(tokens["admin"]) as admin:
        lookup = f"/api/v1/master-index/{master_index_of(admin, study)}"

    def look(_: int) -> int:
        with stack.gateway(tokens["rad_b"]) as radiologist:
            return radiologist.get(lookup, params={"purpose": "second opinion"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(look, range(8))) == {200}
    with stack.gateway(tokens["hadmin_a"]) as admin_of_a:
        grants = admin_of_a.get(f"{base}/studies/{study.exam.study_instance_uid}/grants").json()
    live = [g for g in grants if g["kind"] == "mutual-recognition" and g["revoked_at"] is None]
    assert len(live) == 1, grants


# -- hole 8 ---------------------------------------------------------------------------------


def test_the_masked_national_id_and_birth_date_do_not_rebuild_the_number(
    stack: StackClient, tokens: dict[str, str]
) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    born = dt.date(1990, 3, 7)
    number = national_id.make("110101", born, 451)
    record = patient_record(study) | {"national_id": number, "birth_date": born.isoformat()}
    record.pop("age")
    path = f"/api/v1/institutions/{A}/patients/{study.patient.mrn}"
    with stack.gateway(tokens["admin"]) as admin:
        assert admin.put(path, json=record).status_code == 200
        got = admin.get(path).json()
    assert got["birth_date"] == "1990-03-07"
    masked = got["national_id_masked"]
    assert masked == number[0] + "*" * 16 + number[-1]
    assert "110101" not in masked and "19900307" not in masked
