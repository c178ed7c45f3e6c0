"""Central's series read-ahead on the real stack: a whole study comes back as stored, in the
order the read-ahead fetches it, a tampered object fails alone, and read-ahead on and off
serve the same bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from bench.read_ahead import index_order, orthanc_order, restart_central
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, multipart_parts
from deploy.stack.launcher import load_context
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import StackSettings

from .test_archive import dicom_bytes, dicom_object_key, upload

ACCEPT = {"Accept": 'multipart/related; type="application/dicom"'}
INSTANCES = 12


@pytest.fixture(scope="module")
def ctx(stack_settings: StackSettings):
    return load_context(stack_settings)


@pytest.fixture
def central(stack: StackClient) -> Iterator[httpx.Client]:
    with stack.orthanc("CENTRAL_ORTHANC") as client:
        yield client


@pytest.fixture(scope="module")
def study(stack: StackClient) -> dict[str, Any]:
    sample = make_study(3301, "CT", instances=INSTANCES)
    files = dicom_bytes(sample)
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        ids = upload(central, files)
    return {"exam": sample.exam, "files": files, "ids": ids}


def counters(central: httpx.Client) -> dict[str, Any]:
    return central.get("/imaging-cloud/status").json()["read_ahead"]


def sop_of(part: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)


def retrieve_study(central: httpx.Client, study: dict[str, Any]) -> list[bytes]:
    response = central.get(f"/dicom-web/studies/{study['exam'].study_instance_uid}", headers=ACCEPT)
    assert response.status_code == 200, response.text
    return multipart_parts(response)


def test_a_whole_study_comes_back_as_stored_and_read_ahead(
    stack: StackClient, central: httpx.Client, study: dict[str, Any], ctx
) -> None:
    before = counters(central)
    assert before["enabled"] is True  # on by default
    parts = retrieve_study(central, study)
    after = counters(central)
    assert {sop_of(p): p for p in parts} == study["files"]
    # DICOMweb reads in the order Orthanc lists the study, which the read-ahead follows:
    # after the first read (a miss), every other instance was fetched ahead
    order = [sop_of(p) for p in parts]
    uid = study["exam"].study_instance_uid
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])
    assert order == orthanc_order(stack["CENTRAL_ORTHANC_URL"], auth, uid)
    assert sorted(order) == sorted(index_order(ctx, uid))
    served_ahead = (after["hits"] - before["hits"]) + (after["waited"] - before["waited"])
    assert served_ahead == INSTANCES - 1
    assert after["misses"] - before["misses"] == 1
    assert after["failed"] == before["failed"]


@contextmanager
def tampered(stack: StackClient, key: str) -> Iterator[bytes]:
    """One byte of the object at `key` flipped in S3 for the duration; its original."""
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    bucket = stack["S3_BUCKET"]
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(flipped))
    try:
        yield original
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)


def served_parts(central: httpx.Client, study: dict[str, Any]) -> dict[str, bytes]:
    """SOP Instance UID -> part of a whole-study WADO-RS answer (which may stop early)."""
    uid = study["exam"].study_instance_uid
    response = central.get(f"/dicom-web/studies/{uid}", headers=ACCEPT)
    assert response.status_code == 200
    return {sop_of(p): p for p in multipart_parts(response) if p}


def test_a_tampered_object_fails_alone_with_read_ahead(
    stack: StackClient, central: httpx.Client, study: dict[str, Any]
) -> None:
    sops = list(study["ids"])  # uploaded one by one: index order
    victim = sops[INSTANCES // 2]
    key = dicom_object_key(central, study["ids"][victim])
    with tampered(stack, key):
        before = counters(central)
        served = served_parts(central, study)
        assert counters(central)["prefetched"] > before["prefetched"]  # fetched ahead
        assert victim not in served and study["files"][victim] not in served.values()
        assert all(served[s] == study["files"][s] for s in served)
        # DICOMweb 1.20 stops a study's answer at an instance that fails to read (with
        # read-ahead off as well: see the next test); what it sent before is intact
        assert set(sops[: INSTANCES // 2]) <= set(served)
        for sop in sops:  # each instance fails or serves on its own
            got = central.get(f"/instances/{study['ids'][sop]}/file")
            if sop == victim:
                assert got.status_code >= 500
            else:
                assert got.status_code == 200 and got.content == study["files"][sop]
        log = (Path(stack["STACK_DIR"]) / "log" / "central.log").read_text()
        assert f"object {key}: payload fails authentication" in log
    assert central.get(f"/instances/{study['ids'][victim]}/file").content == study["files"][victim]


def test_read_ahead_on_and_off_serve_identical_bytes(
    stack: StackClient, study: dict[str, Any], ctx
) -> None:
    exam = study["exam"]
    series = f"/dicom-web/studies/{exam.study_instance_uid}/series/{exam.series_instance_uid}"
    victim = list(study["ids"])[INSTANCES // 2]
    served: dict[bool, tuple[list[bytes], list[bytes], dict[str, bytes]]] = {}
    try:
        for enabled in (False, True):
            restart_central(ctx, {"Enabled": enabled})
            with stack.orthanc("CENTRAL_ORTHANC") as central:
                assert counters(central)["enabled"] is enabled
                whole = retrieve_study(central, study)
                response = central.get(series, headers=ACCEPT)
                assert response.status_code == 200
                with tampered(stack, dicom_object_key(central, study["ids"][victim])):
                    broken = served_parts(central, study)
                served[enabled] = (whole, multipart_parts(response), broken)
    finally:
        restart_central(ctx, None)
    assert served[True] == served[False]
    assert sorted(served[True][0]) == sorted(study["files"].values())
    assert victim not in served[False][2]


def test_a_series_of_another_study_is_not_looked_up(
    central: httpx.Client, study: dict[str, Any]
) -> None:
    """The gateway authorises by the study in the URI: a series UID of another study under
    it must not make the read-ahead list that series (no announcement, nothing fetched)."""
    other = make_study(3302, "CT", instances=2)
    upload(central, dicom_bytes(other))
    before = counters(central)
    uri = (
        f"/dicom-web/studies/{study['exam'].study_instance_uid}"
        f"/series/{other.exam.series_instance_uid}"
    )
    assert central.get(uri, headers=ACCEPT).status_code == 404
    after = counters(central)
    assert after["announced"] == before["announced"]
    assert after["lookup_errors"] == before["lookup_errors"] + 1
    # the same series under its own study is announced
    own = f"/dicom-web/studies/{other.exam.study_instance_uid}/series/"
    own += other.exam.series_instance_uid
    assert central.get(own, headers=ACCEPT).status_code == 200
    assert counters(central)["announced"] == after["announced"] + 1
