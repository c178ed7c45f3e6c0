"""imgcloud.orthanc_ids against a real Orthanc: the instance and study IDs the edge's C-STORE
filter computes from an instance's tags are the ones Orthanc gives it, and the file the
filter sees is the file Orthanc stores (the edge compresses those bytes instead of reading
them back). Its own Orthanc (the Python plugin and a small filter script, no stack),
C-STOREd by dcmtk's storescu, with PatientIDs of every awkward shape."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from deploy.samples.studies import make_study
from deploy.stack.ports import pick_free
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.services.orthanc import dicom_modality
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually

# What the edge's glue does in its C-STORE filter and change callback, recorded to a file.
SCRIPT = """
import hashlib, json, threading, orthanc
from imgcloud.orthanc_ids import InstanceIds

OUT = {out!r}
LOCK = threading.Lock()

def record(entry):
    with LOCK, open(OUT, "a") as f:
        f.write(json.dumps(entry) + "\\n")

def on_cstore(received):
    tags = json.loads(received.GetInstanceSimplifiedJson())
    ids = InstanceIds.from_tags(tags)
    data = received.GetInstanceData()
    record({{"sop": tags["SOPInstanceUID"], "instance": ids.instance, "study": ids.study,
            "size": received.GetInstanceSize(), "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}})
    return 0

def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        record({{"new": resource_id}})

orthanc.RegisterIncomingCStoreInstanceFilter(on_cstore)
orthanc.RegisterOnChangeCallback(on_change)
"""

# (PatientID (LO) as the modality sends it, None = no such element; its character set).
# Odd lengths go on the wire padded with a space.
PATIENT_IDS: list[tuple[str | None, str | None]] = [
    ("P1234", None), ("AB", None), ("  lead", None), ("trail  ", None), ("", None),
    (None, None), ("a|b", None), ("患者0001", "ISO_IR 192"), ("患者0002", "GB18030"),
    ("Müller", "ISO_IR 100"),
]  # fmt: skip


def datasets(seed: int) -> list[Dataset]:
    out = []
    for index, (patient_id, charset) in enumerate(PATIENT_IDS):
        ds = next(make_study(seed + index, "CT", instances=1).instances())
        if charset is not None:
            ds.SpecificCharacterSet = charset  # pydicom encodes the values with it
            ds.PatientName = "Ids^Test"  # in every character set
        if patient_id is None:
            del ds.PatientID
        else:
            ds.PatientID = patient_id
        uid = generate_uid()
        while len(uid) % 2 == 0:
            uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid  # sent NUL-padded
        out.append(ds)
    return out


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[httpx.Client, int, Path]]:
    http_port, dicom_port = pick_free(2, [])
    out = tmp_path / "records.jsonl"
    script = tmp_path / "ids.py"
    script.write_text(SCRIPT.format(out=str(out)))
    config = {
        "Name": "orthanc-ids-test",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "IDS_TEST",
        "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "storage"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"test": "test"},
        "DicomModalities": {"DEMO_CT": dicom_modality("DEMO_CT", 104)},
        "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
        "PythonScript": str(script),
        "Python": {"AllowThreads": True},
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    argv, env = orthanc_command(StackSettings.from_env(), path, [tmp_path])
    log = (tmp_path / "orthanc.log").open("w")
    proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=log)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{http_port}", auth=("test", "test"), timeout=30
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/system").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.3)
        yield client, dicom_port, out
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_filter_knows_each_instance_as_orthanc_will_name_and_store_it(
    orthanc: tuple[httpx.Client, int, Path], tmp_path: Path
) -> None:
    client, port, out = orthanc
    folder = tmp_path / "study"
    folder.mkdir()
    sent = datasets(random.randrange(100_000, 900_000))  # noqa: S311 - fresh per run
    for index, ds in enumerate(sent):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / f"{index:03d}.dcm").write_bytes(buffer.getvalue())
    subprocess.run(
        ["storescu", "-aet", "DEMO_CT", "-aec", "IDS_TEST", "+sd", "127.0.0.1", str(port),
         str(folder)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    eventually(
        lambda: sum("new" in e for e in lines()) == len(sent),
        what="a NEW_INSTANCE change per instance",
        timeout=30,
    )
    seen = {e["sop"]: e for e in lines() if "sop" in e}
    announced = {e["new"] for e in lines() if "new" in e}
    assert set(seen) == {str(ds.SOPInstanceUID) for ds in sent}
    stored = client.get("/instances", params={"expand": ""}).json()
    assert len(stored) == len(sent)
    for instance in stored:
        entry = seen[instance["MainDicomTags"]["SOPInstanceUID"]]
        # the IDs: as Orthanc names the instance (and announces it) and its study
        assert entry["instance"] == instance["ID"]
        assert entry["instance"] in announced
        assert entry["study"] == client.get(f"/instances/{instance['ID']}/study").json()["ID"]
        # the bytes: the filter's file is the stored file
        data = client.get(f"/instances/{instance['ID']}/file").content
        assert (entry["size"], entry["length"]) == (len(data), len(data))
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
