"""Central archive: every file encrypted in S3, byte-identical back, tamper-evident."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imgcloud.storage.envelope import key_id_of
from imgcloud.storage.keyring import KeyRing
from imgcloud.storage.object_keys import object_key, parse_object_key

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study, multipart_parts
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import REPO_ROOT, StackSettings

from ..support.eventually import eventually
from .fresh import fresh_seed


def dicom_bytes(study: SampleStudy) -> dict[str, bytes]:
    files = {}
    for ds in study.instances():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files[str(ds.SOPInstanceUID)] = buffer.getvalue()
    return files


def upload(central: httpx.Client, files: dict[str, bytes]) -> dict[str, str]:
    """POST each file to central; SOP Instance UID -> Orthanc instance ID."""
    ids = {}
    for sop_uid, raw in files.items():
        response = central.post("/instances", content=raw)
        assert response.status_code == 200, response.text
        ids[sop_uid] = response.json()["ID"]
    return ids


def entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


@pytest.fixture
def central(stack: StackClient) -> Iterator[httpx.Client]:
    with stack.orthanc("CENTRAL_ORTHANC") as client:
        yield client


@pytest.fixture
def s3(stack: StackClient):
    return s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])


def dicom_object_key(central: httpx.Client, instance_id: str) -> str:
    info = central.get(f"/instances/{instance_id}/attachments/dicom/info").json()
    return object_key("", info["Uuid"], 1)


def storage_cli(stack_settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    config = stack_settings.state_dir / "central" / "orthanc.json"
    return subprocess.run(
        [sys.executable, "-m", "imgcloud.storage", *args, "--orthanc-config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_rest_and_wado_rs_return_exactly_what_was_sent(central: httpx.Client) -> None:
    study = make_study(3101, "CT", instances=4)
    files = dicom_bytes(study)
    ids = upload(central, files)
    for sop_uid, instance_id in ids.items():
        assert central.get(f"/instances/{instance_id}/file").content == files[sop_uid]
    exam = study.exam
    response = central.get(
        f"/dicom-web/studies/{exam.study_instance_uid}/series/{exam.series_instance_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200
    assert sorted(multipart_parts(response)) == sorted(files.values())


def test_every_object_in_the_bucket_is_ciphertext(
    stack: StackClient, central: httpx.Client, s3
) -> None:
    study = make_study(3102, "CT", instances=3)
    files = dicom_bytes(study)
    ours = {dicom_object_key(central, i) for i in upload(central, files).values()}
    # (b"DICM" is looked for where a DICOM file has it: four bytes anywhere in megabytes
    # of ciphertext turn up by chance)
    clear_markers = [
        study.patient.name_pinyin.encode(),
        study.patient.name_hanzi.encode(),
        study.patient.mrn.encode(),
        study.exam.study_instance_uid.encode(),
        study.exam.exam_no.encode(),
    ]
    checked = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack["S3_BUCKET"]):
        for item in page.get("Contents", []):
            if parse_object_key("", item["Key"]) is None:
                continue  # another test's scratch object
            blob = s3.get_object(Bucket=stack["S3_BUCKET"], Key=item["Key"])["Body"].read()
            assert blob[:3] == b"ICE", item["Key"]
            assert blob[128:132] != b"DICM", item["Key"]
            assert not any(marker in blob for marker in clear_markers), item["Key"]
            if len(blob) > 100_000:
                assert entropy(blob) > 7.99, item["Key"]
            checked.add(item["Key"])
    # this study's DICOM files were among them (their small attachments are rows, checked in
    # test_small_attachments.py)
    assert ours <= checked


def test_one_tampered_object_fails_alone(stack: StackClient, central: httpx.Client, s3) -> None:
    files = dicom_bytes(make_study(3103, "CT", instances=3))
    ids = list(upload(central, files).values())
    key = dicom_object_key(central, ids[1])
    original = s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=bytes(tampered))
    try:
        broken = central.get(f"/instances/{ids[1]}/file")
        assert broken.status_code >= 500
        assert original not in broken.content
        for other in (ids[0], ids[2]):
            assert central.get(f"/instances/{other}/file").status_code == 200
        log = (Path(stack["STACK_DIR"]) / "log" / "central.log").read_text()
        assert f"object {key}: payload fails authentication" in log
    finally:
        s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=original)
    assert central.get(f"/instances/{ids[1]}/file").status_code == 200


def test_rotation_rewrap_and_retirement(
    stack: StackClient, stack_settings: StackSettings, central: httpx.Client, s3
) -> None:
    first = upload(central, dicom_bytes(make_study(3104, "CT", instances=2)))
    # one central node: both phases of the rotation here (deploy.stack rotate-key does them
    # across nodes, tests/nodes/test_key_ring_rotation.py)
    added = storage_cli(stack_settings, "add-key", "--new-key", "k-rot-2", "--single-node")
    assert added.returncode == 0, added.stderr
    rotated = storage_cli(stack_settings, "promote", "--key", "k-rot-2")
    assert rotated.returncode == 0, rotated.stderr

    def key_of(instance_id: str) -> str:
        blob = s3.get_object(Bucket=stack["S3_BUCKET"], Key=dicom_object_key(central, instance_id))[
            "Body"
        ].read()
        return key_id_of(blob, "")

    def sealed_under_the_new_key() -> dict[str, str] | None:
        """A fresh upload, if it went under k-rot-2: central re-reads a changed ring at its
        next storage access once 2 s have passed since it last looked."""
        ids = upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=2)))
        return ids if {key_of(i) for i in ids.values()} == {"k-rot-2"} else None

    second = eventually(
        sealed_under_the_new_key, what="uploads sealed under k-rot-2", timeout=20, interval=1
    )
    assert {key_of(i) for i in second.values()} == {"k-rot-2"}
    assert {key_of(i) for i in first.values()} != {"k-rot-2"}
    for instance_id in [*first.values(), *second.values()]:
        assert central.get(f"/instances/{instance_id}/file").status_code == 200

    rewrapped = storage_cli(stack_settings, "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stderr
    summary = json.loads(rewrapped.stdout)
    assert summary["current_key"] == "k-rot-2" and summary["rewrapped"] >= 2
    assert summary["failed"] == {}
    assert {key_of(i) for i in first.values()} == {"k-rot-2"}

    old_keys = [
        k
        for k in json.loads(
            (stack_settings.state_dir / "keys" / "central" / "keyring.json").read_text()
        )["keys"]
        if k != "k-rot-2"
    ]
    log = Path(stack["STACK_DIR"]) / "log" / "central.log"
    offset = log.stat().st_size
    for old in old_keys:
        assert storage_cli(stack_settings, "retire", "--key", old).returncode == 0

    def reloaded_without_the_old_keys() -> bool:
        upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=1)))  # an access
        with log.open("rb") as f:
            f.seek(offset)
            tail = f.read().decode("utf-8", errors="replace")
        return (
            re.search(
                r"key ring reloaded: version \d+, current key k-rot-2, keys k-rot-2\s*$",
                tail,
                re.M,
            )
            is not None
        )

    eventually(
        reloaded_without_the_old_keys,
        what="central's log line of the ring reloaded without the retired keys",
        timeout=20,
        interval=1,
    )
    for instance_id in [*first.values(), *second.values()]:
        assert central.get(f"/instances/{instance_id}/file").status_code == 200
    ring = KeyRing.from_file(stack_settings.state_dir / "keys" / "central" / "keyring.json", "ring")
    assert central.get("/imaging-cloud/status").json()["key_ring"] == {
        "version": ring.version,
        "current": "k-rot-2",
        "keys": ["k-rot-2"],
        "kcv": {"k-rot-2": ring.check_value("k-rot-2")},
    }


def test_consistency_check_finds_orphans_and_missing_objects(
    stack: StackClient, stack_settings: StackSettings, central: httpx.Client, s3
) -> None:
    ids = list(upload(central, dicom_bytes(make_study(3106, "CT", instances=2))).values())
    orphan = object_key("", "0badc0de-0000-4000-8000-000000000001", 1)
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=orphan, Body=b"ICE left by a crash")
    missing = dicom_object_key(central, ids[0])
    saved = s3.get_object(Bucket=stack["S3_BUCKET"], Key=missing)["Body"].read()
    s3.delete_object(Bucket=stack["S3_BUCKET"], Key=missing)
    try:
        report = storage_cli(stack_settings, "check")
        result = json.loads(report.stdout)
        assert orphan in result["orphans"] and missing in result["missing"]
        assert report.returncode == 1  # something indexed has no object
        kept = json.loads(
            storage_cli(stack_settings, "check", "--delete-orphans", "--grace-hours", "1").stdout
        )
        assert orphan not in kept["deleted"] and kept["young_orphans_kept"] >= 1
        cleaned = json.loads(
            storage_cli(stack_settings, "check", "--delete-orphans", "--grace-hours", "0").stdout
        )
        assert orphan in cleaned["deleted"]
    finally:
        s3.put_object(Bucket=stack["S3_BUCKET"], Key=missing, Body=saved)
    final = storage_cli(stack_settings, "check")
    assert final.returncode == 0, final.stdout
    assert orphan not in json.loads(final.stdout)["orphans"]


def test_s3_outage_fails_ingest_cleanly_and_recovers(
    stack: StackClient, stack_settings: StackSettings, central: httpx.Client
) -> None:
    study = make_study(3107, "CT", instances=1)
    raw = next(iter(dicom_bytes(study).values()))
    ctx = load_context(stack_settings)
    stop_service(ctx, "seaweedfs")
    try:
        started = time.monotonic()
        refused = central.post("/instances", content=raw, timeout=120)
        assert refused.status_code >= 500
        assert time.monotonic() - started < 60
        assert find_study(central, study.exam.study_instance_uid) is None
    finally:
        start_service(ctx, "seaweedfs")
    accepted = central.post("/instances", content=raw)
    assert accepted.status_code == 200
    assert central.get(f"/instances/{accepted.json()['ID']}/file").content == raw
