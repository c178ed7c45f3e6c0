"""Small attachments in central's PostgreSQL (#12): each instance costs one object in the
bucket, its "DICOM until pixel data" attachment (content type 3) is a row of
imgcloud_small_objects holding the same sealed envelope, a flipped byte there fails that
attachment alone, deletion removes both, the maintenance commands see the rows, and a
type-3 object left in the bucket by an earlier release stays readable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from imgcloud.errors import IntegrityError
from imgcloud.storage.envelope import key_id_of, open_sealed
from imgcloud.storage.keyring import KeyRing
from imgcloud.storage.object_keys import object_key

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from .fresh import fresh_seed
from .test_archive import dicom_bytes, storage_cli, upload

pytestmark = pytest.mark.integration

UNTIL_PIXEL_DATA = 3
TABLE = "imgcloud_small_objects"


@pytest.fixture
def central(stack: StackClient) -> Iterator[httpx.Client]:
    with stack.orthanc("CENTRAL_ORTHANC") as client:
        yield client


@pytest.fixture
def s3(stack: StackClient):
    return s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])


@pytest.fixture
def db(stack_settings: StackSettings) -> Iterator[psycopg.Connection]:
    """central's database as central's role (its Orthanc index and our tables)."""
    ctx = load_context(stack_settings)
    dsn = ctx.pg_dsn("orthanc_central", "orthanc_central", "db_central")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        yield conn


def keys_of(central: httpx.Client, instance_id: str) -> dict[int, str]:
    """content type -> object name of each attachment Orthanc indexed for the instance."""
    names = central.get(f"/instances/{instance_id}/attachments").json()
    found = {}
    for name in names:
        info = central.get(f"/instances/{instance_id}/attachments/{name}/info").json()
        found[int(info["ContentType"])] = object_key("", info["Uuid"], int(info["ContentType"]))
    return found


def row(db: psycopg.Connection, key: str) -> bytes | None:
    found = db.execute(f"SELECT sealed FROM {TABLE} WHERE object_key = %s", (key,)).fetchone()  # noqa: S608
    return bytes(found[0]) if found else None


def in_bucket(stack: StackClient, s3, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=stack["S3_BUCKET"], Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", []))


def ring(stack_settings: StackSettings) -> KeyRing:
    return KeyRing.from_file(stack_settings.state_dir / "keys" / "central" / "keyring.json", "r")


def test_one_object_in_the_bucket_and_the_small_attachment_sealed_in_postgresql(
    stack: StackClient, stack_settings: StackSettings, central: httpx.Client, s3, db
) -> None:
    study = make_study(fresh_seed(), "CT", instances=3)
    ids = upload(central, dicom_bytes(study))
    for instance_id in ids.values():
        keys = keys_of(central, instance_id)
        # what Orthanc 1.12.7 writes per instance here: the file and its head, nothing else
        assert set(keys) == {1, UNTIL_PIXEL_DATA}
        assert in_bucket(stack, s3, keys[1])
        assert not in_bucket(stack, s3, keys[UNTIL_PIXEL_DATA])
        sealed = row(db, keys[UNTIL_PIXEL_DATA])
        assert sealed is not None and sealed[:3] == b"ICE"
        for marker in (study.patient.mrn, study.patient.name_pinyin, study.exam.exam_no):
            assert marker.encode() not in sealed
        served = central.get(
            f"/instances/{instance_id}/attachments/dicom-until-pixel-data/data"
        ).content
        opened = open_sealed(
            sealed,
            object_key=keys[UNTIL_PIXEL_DATA],
            attachment_type=UNTIL_PIXEL_DATA,
            ring=ring(stack_settings),
        )
        assert opened == served and served[128:132] == b"DICM"
        # bound to its name and type: the same envelope under another name does not open
        with pytest.raises(IntegrityError):
            open_sealed(sealed, object_key=keys[1], attachment_type=1, ring=ring(stack_settings))


def test_a_flipped_byte_in_a_row_fails_that_attachment_alone(
    stack: StackClient, central: httpx.Client, db
) -> None:
    ids = list(upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=3))).values())
    key = keys_of(central, ids[1])[UNTIL_PIXEL_DATA]
    original = row(db, key)
    assert original is not None
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    db.execute(f"UPDATE {TABLE} SET sealed = %s WHERE object_key = %s", (bytes(tampered), key))  # noqa: S608
    path = "/attachments/dicom-until-pixel-data/data"
    try:
        assert central.get(f"/instances/{ids[1]}{path}").status_code >= 500
        assert central.get(f"/instances/{ids[1]}/file").status_code == 200  # the file is fine
        for other in (ids[0], ids[2]):
            assert central.get(f"/instances/{other}{path}").status_code == 200
        log = (Path(stack["STACK_DIR"]) / "log" / "central.log").read_text()
        assert f"object {key}: payload fails authentication" in log
    finally:
        db.execute(f"UPDATE {TABLE} SET sealed = %s WHERE object_key = %s", (original, key))  # noqa: S608
    assert central.get(f"/instances/{ids[1]}{path}").status_code == 200


def test_deleting_an_instance_removes_its_row_and_its_object(
    stack: StackClient, central: httpx.Client, s3, db
) -> None:
    ids = list(upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=1))).values())
    keys = keys_of(central, ids[0])
    assert row(db, keys[UNTIL_PIXEL_DATA]) is not None
    assert central.delete(f"/instances/{ids[0]}").status_code == 200
    assert row(db, keys[UNTIL_PIXEL_DATA]) is None
    assert not in_bucket(stack, s3, keys[1])


def test_a_small_attachment_left_in_the_bucket_stays_readable_and_removable(
    stack: StackClient, central: httpx.Client, s3, db
) -> None:
    """As an earlier release (or "SmallAttachments": "object-store") left it."""
    ids = list(upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=1))).values())
    key = keys_of(central, ids[0])[UNTIL_PIXEL_DATA]
    path = f"/instances/{ids[0]}/attachments/dicom-until-pixel-data/data"
    served = central.get(path).content
    sealed = row(db, key)
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=sealed)
    db.execute(f"DELETE FROM {TABLE} WHERE object_key = %s", (key,))  # noqa: S608
    assert central.get(path).content == served
    assert central.delete(f"/instances/{ids[0]}").status_code == 200
    assert not in_bucket(stack, s3, key)


def test_check_and_rewrap_cover_the_rows(
    stack_settings: StackSettings, central: httpx.Client, db
) -> None:
    ids = list(upload(central, dicom_bytes(make_study(fresh_seed(), "CT", instances=2))).values())
    heads = [keys_of(central, i)[UNTIL_PIXEL_DATA] for i in ids]
    orphan = object_key("", "0badc0de-0000-4000-8000-00000000c0de", UNTIL_PIXEL_DATA)
    db.execute(f"INSERT INTO {TABLE} (object_key, sealed) VALUES (%s, 'ICE crash')", (orphan,))  # noqa: S608
    saved = row(db, heads[0])
    db.execute(f"DELETE FROM {TABLE} WHERE object_key = %s", (heads[0],))  # noqa: S608
    try:
        report = storage_cli(stack_settings, "check")
        result = json.loads(report.stdout)
        assert orphan in result["orphans"] and heads[0] in result["missing"]
        assert report.returncode == 1
    finally:
        db.execute(f"INSERT INTO {TABLE} (object_key, sealed) VALUES (%s, %s)", (heads[0], saved))  # noqa: S608
    cleaned = json.loads(
        storage_cli(stack_settings, "check", "--delete-orphans", "--grace-hours", "0").stdout
    )
    assert orphan in cleaned["deleted"] and row(db, orphan) is None

    before = ring(stack_settings).current_id
    new = f"k-small-{fresh_seed()}"
    assert storage_cli(stack_settings, "add-key", "--new-key", new, "--single-node").returncode == 0
    assert storage_cli(stack_settings, "promote", "--key", new).returncode == 0
    counted = storage_cli(stack_settings, "check", "--key", before)
    by_key = json.loads(counted.stdout)["objects_by_key"]
    rows = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # noqa: S608
    assert rows is not None and by_key.get(before, 0) >= rows[0] >= 2  # the rows are counted
    assert counted.returncode == 1
    time.sleep(2.5)  # central re-reads its ring at most every 2 s (nothing writes meanwhile)
    rewrapped = storage_cli(stack_settings, "rewrap")
    assert rewrapped.returncode == 0, rewrapped.stderr
    summary = json.loads(rewrapped.stdout)
    assert summary["by_store"]["postgresql"]["rewrapped"] >= 2, summary
    assert summary["failed"] == {}
    for head in heads:
        sealed = row(db, head)
        assert sealed is not None and key_id_of(sealed, head) == new
    after = storage_cli(stack_settings, "check", "--key", before)
    assert after.returncode == 0, after.stdout + after.stderr
    assert before not in json.loads(after.stdout)["objects_by_key"]
    for instance_id in ids:
        for path in ("file", "attachments/dicom-until-pixel-data/data"):
            assert central.get(f"/instances/{instance_id}/{path}").status_code == 200


def test_s3_outage_leaves_no_row_and_no_index_entry(
    stack: StackClient, stack_settings: StackSettings, central: httpx.Client, db
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1)
    raw = next(iter(dicom_bytes(study).values()))
    rows_before = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # noqa: S608
    ctx = load_context(stack_settings)
    stop_service(ctx, "seaweedfs")
    try:
        refused = central.post("/instances", content=raw, timeout=120)
        assert refused.status_code >= 500
        assert find_study(central, study.exam.study_instance_uid) is None
        assert db.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == rows_before  # noqa: S608
    finally:
        start_service(ctx, "seaweedfs")

    def accepted_now() -> httpx.Response | None:
        response = central.post("/instances", content=raw)
        return response if response.status_code == 200 else None

    accepted = eventually(accepted_now, what="ingest after S3 is back", timeout=30)
    assert central.get(f"/instances/{accepted.json()['ID']}/file").content == raw


def test_a_stuck_small_store_fails_ingest_cleanly_within_its_timeout(
    stack_settings: StackSettings, central: httpx.Client, db, stack: StackClient
) -> None:
    """PostgreSQL answering Orthanc's index but not our table (a lock held elsewhere): the
    statement timeout turns it into an error and nothing is indexed. Orthanc 1.12.7 does not
    remove the DICOM file it wrote to the bucket just before: that object is an orphan, as
    after a crash between the two writes, which `check` lists and --delete-orphans sweeps."""
    study = make_study(fresh_seed(), "CT", instances=1)
    raw = next(iter(dicom_bytes(study).values()))
    orphans_before = set(json.loads(storage_cli(stack_settings, "check").stdout)["orphans"])
    rows_before = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # noqa: S608
    ctx = load_context(stack_settings)
    dsn = ctx.pg_dsn("orthanc_central", "orthanc_central", "db_central")
    with psycopg.connect(dsn, connect_timeout=5) as holder:
        holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        refused = central.post("/instances", content=raw, timeout=60)
        waited = time.monotonic() - started
        holder.rollback()
    assert refused.status_code >= 500
    assert waited < 30, waited
    assert find_study(central, study.exam.study_instance_uid) is None
    assert db.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == rows_before  # noqa: S608
    log = (Path(stack["STACK_DIR"]) / "log" / "central.log").read_text()
    assert "storage create failed: PostgreSQL put" in log and "QueryCanceled" in log
    found = json.loads(storage_cli(stack_settings, "check").stdout)["orphans"]
    left = set(found) - orphans_before
    assert len(left) == 1 and next(iter(left)).endswith(".1"), left  # the DICOM file only
    swept = storage_cli(stack_settings, "check", "--delete-orphans", "--grace-hours", "0")
    assert left <= set(json.loads(swept.stdout)["deleted"])
    accepted = central.post("/instances", content=raw)
    assert accepted.status_code == 200
