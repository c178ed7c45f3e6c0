"""A C-STORE to hospital A's edge arrives at central with the same instances and pixels."""

from __future__ import annotations

import hashlib
import io
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from deploy.samples import modality
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study, wait_for_instances

from ..support.eventually import eventually
from .fresh import fresh_seed

SLICES = 12
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def local_copies_replaced(edge: httpx.Client) -> None:
    """The edge replaces its received copies by the compressed ones once the modality is
    idle and central confirmed them (ImagingCloud.ReplaceAfterIdleSeconds): wait for it."""
    eventually(
        lambda: edge.get("/imaging-cloud/status").json()["replaces_pending"] == 0,
        what="the edge's local copies replaced by the compressed ones",
        timeout=60,
    )


@pytest.fixture(scope="module")
def sent_study(stack: StackClient):
    study = make_study(
        random.randrange(100_000, 900_000),  # noqa: S311 - fresh per run
        "CT",
        instances=SLICES,
        institution_code=stack["EDGE_A_INSTITUTION"],
    )
    result = stack.send_to_edge("A", study.instances())
    assert result.ok, result.failed
    assert result.sent == SLICES
    return study


def test_study_reaches_central_compressed_with_identical_pixels(
    stack: StackClient, sent_study
) -> None:
    uid = sent_study.exam.study_instance_uid
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = wait_for_instances(central, uid, SLICES, timeout_s=120)
        instances = central.get(f"/studies/{study_id}/instances").json()
        received = {}
        for inst in instances:
            raw = central.get(f"/instances/{inst['ID']}/file").content
            ds = pydicom.dcmread(io.BytesIO(raw))
            received[ds.SOPInstanceUID] = ds
    assert set(received) == set(sent_study.sop_instance_uids)
    for original in sent_study.instances():
        got = received[original.SOPInstanceUID]
        # Compressed losslessly at the edge (JPEG-LS), and decoded it is the same image.
        assert got.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
        assert len(got.PixelData) < len(original.PixelData) / 2
        assert np.array_equal(got.pixel_array, original.pixel_array)
        assert got.AccessionNumber == sent_study.exam.exam_no
        assert str(got.PatientName) == sent_study.patient.dicom_name


def test_the_edge_keeps_the_copy_it_forwarded(stack: StackClient, sent_study) -> None:
    """The C-STORE stored each instance as received; forwarding compressed it and replaced
    the edge's copy with exactly the bytes central holds."""
    uid = sent_study.exam.study_instance_uid
    with stack.orthanc("CENTRAL_ORTHANC") as central, stack.orthanc("EDGE_A") as edge:
        central_id = wait_for_instances(central, uid, SLICES, timeout_s=120)
        local_copies_replaced(edge)
        at_central = {
            i["MainDicomTags"]["SOPInstanceUID"]: central.get(f"/instances/{i['ID']}/file").content
            for i in central.get(f"/studies/{central_id}/instances").json()
        }
        edge_id = find_study(edge, uid)
        at_edge = {
            i["MainDicomTags"]["SOPInstanceUID"]: edge.get(f"/instances/{i['ID']}/file").content
            for i in edge.get(f"/studies/{edge_id}/instances").json()
        }
        assert len(edge.get(f"/studies/{edge_id}/instances").json()) == SLICES
    assert at_edge == at_central
    for raw in at_edge.values():
        syntax = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
        assert syntax.TransferSyntaxUID == JPEG_LS_LOSSLESS


def test_a_resend_with_other_content_cannot_replace_an_archived_instance(
    stack: StackClient, sent_study
) -> None:
    """The edge overwrites an instance only with its own compressed copy: a modality that
    sends an instance again (here with other pixels) gets a warning, and neither the
    edge's copy nor central's changes."""
    uid = sent_study.exam.study_instance_uid
    first = next(sent_study.instances())
    with stack.orthanc("CENTRAL_ORTHANC") as central, stack.orthanc("EDGE_A") as edge:
        wait_for_instances(central, uid, SLICES, timeout_s=120)
        local_copies_replaced(edge)

        def copies() -> tuple[bytes, bytes]:
            found = []
            for client in (edge, central):
                look = client.post("/tools/lookup", content=first.SOPInstanceUID).json()
                found.append(client.get(f"/instances/{look[0]['ID']}/file").content)
            return found[0], found[1]

        before = copies()
        other = first.copy()
        other.PixelData = bytes(255 - b for b in first.PixelData)
        result = stack.send_to_edge("A", [other])
        assert result.failed == {first.SOPInstanceUID: 0xB000}  # warning: the first stays
        time.sleep(3)  # a replacement would be forwarded within this
        assert copies() == before
        assert len(edge.get(f"/studies/{find_study(edge, uid)}/instances").json()) == SLICES


def test_edge_reports_the_forwarded_study(stack: StackClient, sent_study) -> None:
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(central, sent_study.exam.study_instance_uid, SLICES, timeout_s=120)
    with stack.orthanc("EDGE_A") as edge:
        study_id = find_study(edge, sent_study.exam.study_instance_uid)

        # Central holds the instances a moment before the edge has verified them.
        def delivered() -> dict | None:
            forwarding = edge.get(f"/imaging-cloud/studies/{study_id}/forwarding").json()
            return forwarding if forwarding["state"] == "delivered" else None

        forwarding = eventually(
            delivered, what="the edge reports the study delivered", timeout=60, interval=0.5
        )
        status = edge.get("/imaging-cloud/status").json()
        unknown = edge.get(
            "/imaging-cloud/studies/00000000-00000000-00000000-00000000-00000000/forwarding"
        )
    assert forwarding["state"] == "delivered" and forwarding["instances"] == SLICES
    assert forwarding["last_error"] is None and forwarding["bytes_sent"] > 0
    assert status["institution"] == stack["EDGE_A_INSTITUTION"]
    assert status["delivered_studies"] >= 1 and status["queue_depth"] == 0
    assert unknown.status_code == 404 and "not been queued" in unknown.text


def test_edge_records_the_study_tags_with_patient_data_sealed(
    stack: StackClient, sent_study
) -> None:
    with stack.orthanc("EDGE_A") as edge:
        study_id = find_study(edge, sent_study.exam.study_instance_uid)

        def recorded() -> httpx.Response | None:
            answer = edge.get(f"/imaging-cloud/studies/{study_id}/record")
            return answer if answer.status_code == 200 else None

        answer = eventually(recorded, what="the edge's record of the study", timeout=60)
    record = answer.json()
    exam, patient = sent_study.exam, sent_study.patient
    assert record["institution"] == stack["EDGE_A_INSTITUTION"]
    assert record["accession_number"] == exam.exam_no
    assert record["study_instance_uid"] == exam.study_instance_uid
    assert record["modalities"] == ["CT"] and record["body_parts"] == [exam.body_part]
    assert record["study_date"] == f"{exam.exam_datetime:%Y%m%d}"
    assert record["instance_count"] == SLICES
    assert record["patient"]["patient_id"] == patient.mrn
    assert record["patient"]["patient_name"] == patient.dicom_name
    raw = b"".join(
        p.read_bytes() for p in (Path(stack["STACK_DIR"]) / "edge-a").glob("study-records.sqlite*")
    )
    assert exam.exam_no.encode() in raw  # the linking tags are readable...
    for personal in (patient.mrn, patient.dicom_name, f"{patient.birth_date:%Y%m%d}"):
        assert personal.encode() not in raw  # ...the patient's data is not


def test_central_refuses_a_malformed_verification_request(stack: StackClient) -> None:
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        response = central.post("/imaging-cloud/verify", content=b'{"instances": {"x": "1"}}')
    assert response.status_code == 400
    assert "sha256" in response.text


def test_edge_keeps_its_copy_encrypted_on_disk(stack: StackClient, sent_study) -> None:
    objects = Path(stack["STACK_DIR"]) / "edge-a" / "objects"
    files = [p for p in objects.rglob("*") if p.is_file()]
    assert len(files) >= SLICES
    markers = [sent_study.patient.mrn.encode(), sent_study.exam.exam_no.encode()]
    for path in files:
        blob = path.read_bytes()
        assert blob[:3] == b"ICE" and blob[128:132] != b"DICM", path  # not a DICOM file
        assert not any(m in blob for m in markers), path
    storage_dir = Path(stack["STACK_DIR"]) / "edge-a" / "storage"
    assert not [
        p
        for p in storage_dir.rglob("*")
        if p.is_file() and p.suffix != ".db" and "index" not in p.name
    ]


def test_sm4_edge_forwards_to_central(stack: StackClient) -> None:
    """Hospital B's edge stores with SM4-GCM (GB/T 39786) and still forwards intact pixels."""
    study = make_study(
        fresh_seed(), "MR", instances=3, institution_code=stack["EDGE_B_INSTITUTION"]
    )
    result = stack.send_to_edge("B", study.instances())
    assert result.ok, result.failed
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = wait_for_instances(central, study.exam.study_instance_uid, 3, timeout_s=120)
        raw = central.get(f"/studies/{study_id}/archive").status_code
    assert raw == 200
    algorithms = {
        p.read_bytes()[4] for p in (Path(stack["STACK_DIR"]) / "edge-b" / "objects").rglob("*.1")
    }
    assert algorithms == {2}  # Algorithm.SM4_GCM in every object's header


def test_edge_b_did_not_receive_hospital_a_study(stack: StackClient, sent_study) -> None:
    with stack.orthanc("EDGE_B") as edge_b:
        assert find_study(edge_b, sent_study.exam.study_instance_uid) is None


def test_unknown_calling_ae_cannot_store(stack: StackClient) -> None:
    study = make_study(777, "DX", institution_code=stack["EDGE_A_INSTITUTION"])
    try:
        result = stack.send_to_edge("A", study.instances(), calling_aet="INTRUDER")
    except modality.AssociationRefused:
        pass
    else:
        assert result.sent == 0
        assert len(result.failed) == 1
    with stack.orthanc("EDGE_A") as edge:
        assert find_study(edge, study.exam.study_instance_uid) is None


def test_central_confirms_by_store_time_hash_and_discards_a_mismatch(stack: StackClient) -> None:
    ds = next(make_study(4545, "CT", instances=1).instances())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    sop = str(ds.SOPInstanceUID)
    right = hashlib.sha256(raw).hexdigest()
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        assert central.post("/instances", content=raw).status_code == 200
        confirmed = central.post("/imaging-cloud/verify", json={"instances": {sop: right}})
        assert confirmed.json()["confirmed"] == [sop]
        # What central holds differs from what the sender says it sent: as if corrupted in
        # transit. Central reports it and drops its copy so the resend can replace it.
        wrong = central.post("/imaging-cloud/verify", json={"instances": {sop: "0" * 64}})
        assert wrong.json()["mismatched"] == [sop]
        missing = central.post("/imaging-cloud/verify", json={"instances": {sop: right}})
        assert missing.json()["missing"] == [sop]
        assert central.post("/instances", content=raw).status_code == 200  # the resend
        again = central.post("/imaging-cloud/verify", json={"instances": {sop: right}})
        assert again.json()["confirmed"] == [sop]


def test_signed_12_bit_ct_is_compressed_and_the_edge_stays_up(stack: StackClient) -> None:
    """CT as many scanners send it (signed, 12 of 16 bits) made DCMTK's JPEG-LS encoder abort
    the edge's Orthanc (bench.codecs); CharLS in the edge's encoder processes takes it, and
    it reaches central compressed, pixels intact."""
    study = make_study(
        fresh_seed(), "CT", instances=2, institution_code=stack["EDGE_A_INSTITUTION"]
    )
    sent = []
    for ds in study.instances():
        ds.PixelRepresentation = 1
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleIntercept = 0
        hu = ds.pixel_array.astype(np.int32) - 1024
        ds.PixelData = np.clip(hu, -2048, 2047).astype(np.int16).tobytes()
        sent.append(ds)
    result = stack.send_to_edge("A", sent)
    assert result.ok, result.failed
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = wait_for_instances(central, study.exam.study_instance_uid, 2, timeout_s=120)
        received = {}
        for inst in central.get(f"/studies/{study_id}/instances").json():
            ds = pydicom.dcmread(io.BytesIO(central.get(f"/instances/{inst['ID']}/file").content))
            received[ds.SOPInstanceUID] = ds
    for original in sent:
        got = received[original.SOPInstanceUID]
        assert got.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
        assert np.array_equal(got.pixel_array, original.pixel_array)
    with stack.orthanc("EDGE_A") as edge_a:
        assert edge_a.get("/system").status_code == 200  # the same Orthanc, still up
