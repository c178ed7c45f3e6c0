"""Bad input at the edge is refused with a clear error, and the edge keeps serving."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset

from deploy.samples import modality
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("label", "payload"),
    [
        ("not DICOM at all", b"%PDF-1.7 this is a PDF, not an image"),
        ("empty", b""),
        ("truncated DICOM", encode(next(make_study(7001, "CT", instances=1).instances()))[:700]),
    ],
)
def test_rest_upload_of_garbage_is_refused(stack: StackClient, label: str, payload: bytes) -> None:
    with stack.orthanc("EDGE_A") as edge:
        before = edge.get("/statistics").json()["CountInstances"]
        response = edge.post("/instances", content=payload)
        assert response.status_code == 400, label
        assert edge.get("/statistics").json()["CountInstances"] == before
        assert edge.get("/system").status_code == 200


def test_instance_without_uids_is_refused(stack: StackClient) -> None:
    ds = next(make_study(7002, "CT", instances=1).instances())
    del ds.StudyInstanceUID
    del ds.SOPInstanceUID
    with stack.orthanc("EDGE_A") as edge:
        before = edge.get("/statistics").json()["CountInstances"]
        response = edge.post("/instances", content=encode(ds))
        after = edge.get("/statistics").json()["CountInstances"]
    # Orthanc 1.10 answers 404 "Inexistent tag" here: refused, with the reason's class.
    assert 400 <= response.status_code < 500
    assert response.json()["Message"] == "Inexistent tag"
    assert after == before


def test_c_store_without_sop_instance_uid_gets_a_failure_status(stack: StackClient) -> None:
    ds = next(make_study(7003, "CT", instances=1).instances())
    del ds.SOPInstanceUID
    try:
        result = stack.send_to_edge("A", [ds])
    except (modality.AssociationRefused, ValueError, AttributeError):
        return  # pynetdicom itself refuses to send an instance without a UID
    assert result.sent == 0 and result.failed


def test_edge_still_accepts_good_instances_afterwards(stack: StackClient) -> None:
    study = make_study(7004, "DX", institution_code=stack["EDGE_A_INSTITUTION"])
    result = stack.send_to_edge("A", study.instances())
    assert result.ok and result.sent == 1
