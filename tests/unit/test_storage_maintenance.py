"""Archive maintenance beside a serving Orthanc (imgcloud.storage.maintenance): the rewrap
moves every object to the current master key, resumes from its checkpoint, and reports what
vanished or failed without stopping; the consistency check compares the bucket with
Orthanc's index, deletes only old orphans and never touches objects it does not recognise.
Objects live in a FileStore under tmp_path, sealed with the real envelope."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from imgcloud.errors import ObjectNotFound, StorageError, StorageUnavailable
from imgcloud.storage.backends import FileStore
from imgcloud.storage.envelope import key_id_of, open_sealed, seal
from imgcloud.storage.keyring import KeyRing
from imgcloud.storage.maintenance import (
    RewrapReport,
    check_consistency,
    orthanc_pg_attachments,
    rewrap_all,
)
from imgcloud.storage.object_keys import object_key

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def attachment_uuid(n: int) -> str:
    return str(uuid.UUID(int=n * 0x1000_0001_0000_0001_0000_0001 + 7))


def filled(tmp_path: Path, ring: KeyRing, count: int, prefix: str = "") -> dict[str, bytes]:
    """`count` sealed DICOM attachments in a FileStore; object key -> clear content."""
    store = FileStore(tmp_path / "store")
    contents = {}
    for n in range(count):
        key = object_key(prefix, attachment_uuid(n), 1)
        contents[key] = f"DICM instance {n}".encode() * 20
        store.put(key, seal(contents[key], object_key=key, attachment_type=1, ring=ring))
    return contents


class FlakyStore(FileStore):
    """A FileStore where chosen objects vanish on read or refuse to be written."""

    def __init__(
        self, root: Path, vanish: frozenset[str] = frozenset(), refuse: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(root)
        self.vanish, self.refuse = vanish, refuse

    def get(self, key: str) -> bytes:
        if key in self.vanish:
            raise ObjectNotFound(f"object {key}: not found")
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        if key in self.refuse:
            raise StorageUnavailable(f"file put {key}: no space left on device")
        super().put(key, data)


@pytest.fixture
def rings() -> tuple[KeyRing, KeyRing]:
    old = KeyRing.generate("k1")
    return old, old.with_key("k2").promoted("k2")


# -- rewrap ---------------------------------------------------------------------------------


def test_rewrap_moves_every_object_to_the_current_key_and_keeps_its_content(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, new = rings
    contents = filled(tmp_path, old, 5)
    store = FileStore(tmp_path / "store")
    store.put("notes/readme.txt", b"not ours")  # a name we do not recognise
    report = rewrap_all(store, new, workers=2)
    assert (report.scanned, report.rewrapped, report.already_current) == (5, 5, 0)
    assert report.failed == {} and report.vanished == 0
    only_new = new.without("k1")  # the old key can go now
    for key, clear in contents.items():
        blob = store.get(key)
        assert key_id_of(blob, key) == "k2"
        assert open_sealed(blob, object_key=key, attachment_type=1, ring=only_new) == clear
    assert store.get("notes/readme.txt") == b"not ours"
    again = rewrap_all(store, new)
    assert (again.scanned, again.rewrapped, again.already_current) == (5, 0, 5)


def test_rewrap_reports_progress_per_batch_and_drops_its_checkpoint_when_done(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, new = rings
    filled(tmp_path, old, 5)
    checkpoint = tmp_path / "rewrap.checkpoint"
    seen: list[int] = []
    report = rewrap_all(
        FileStore(tmp_path / "store"),
        new,
        checkpoint=checkpoint,
        batch=2,
        progress=lambda r: seen.append(r.scanned),
    )
    assert seen == [2, 4, 5] and report.rewrapped == 5
    assert not checkpoint.exists()


def test_an_interrupted_rewrap_resumes_after_its_last_batch(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, new = rings
    contents = filled(tmp_path, old, 6)
    keys = sorted(contents)
    store = FileStore(tmp_path / "store")
    checkpoint = tmp_path / "rewrap.checkpoint"

    def stop_after_the_first_batch(report: RewrapReport) -> None:
        raise KeyboardInterrupt  # the operator's ^C, or the host going down

    with pytest.raises(KeyboardInterrupt):
        rewrap_all(store, new, checkpoint=checkpoint, batch=2, progress=stop_after_the_first_batch)
    assert checkpoint.read_text() == keys[1]
    resumed = rewrap_all(store, new, checkpoint=checkpoint, batch=2)
    assert (resumed.scanned, resumed.rewrapped) == (4, 4)  # the first two were done
    assert {key_id_of(store.get(k), k) for k in keys} == {"k2"}
    assert not checkpoint.exists()


def test_a_vanished_object_is_counted_and_a_failed_one_named_without_stopping(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, new = rings
    keys = sorted(filled(tmp_path, old, 5))
    tampered = keys[3]
    raw = bytearray(FileStore(tmp_path / "store").get(tampered))
    raw[12] ^= 0x01  # inside the header: the wrapped key no longer authenticates
    FileStore(tmp_path / "store").put(tampered, bytes(raw))
    store = FlakyStore(tmp_path / "store", vanish=frozenset({keys[0]}), refuse=frozenset({keys[1]}))
    checkpoint = tmp_path / "rewrap.checkpoint"
    report = rewrap_all(store, new, checkpoint=checkpoint, batch=2)
    assert report.scanned == 5 and report.vanished == 1 and report.rewrapped == 2
    assert set(report.failed) == {keys[1], tampered}
    assert "no space left" in report.failed[keys[1]]
    assert "DICM" not in " ".join(report.failed.values())  # no content in a report
    assert checkpoint.exists()  # kept: the run is not complete


def test_a_rerun_after_a_failure_in_an_early_batch_rewraps_that_object_too(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    """The checkpoint must not pass a failed object: a rerun once the cause is fixed (here
    the disk full for one object in the first batch) resumes before it, not after the
    last batch, and leaves no object on the key about to be retired."""
    old, new = rings
    keys = sorted(filled(tmp_path, old, 6))
    checkpoint = tmp_path / "rewrap.checkpoint"
    full = FlakyStore(tmp_path / "store", refuse=frozenset({keys[1]}))
    first = rewrap_all(full, new, checkpoint=checkpoint, batch=2)
    assert set(first.failed) == {keys[1]} and first.rewrapped == 5
    assert checkpoint.read_text() == keys[0]
    store = FileStore(tmp_path / "store")
    rerun = rewrap_all(store, new, checkpoint=checkpoint, batch=2)
    assert (rerun.rewrapped, rerun.already_current, rerun.failed) == (1, 4, {})
    assert {key_id_of(store.get(k), k) for k in keys} == {"k2"}
    assert not checkpoint.exists()


# -- consistency ----------------------------------------------------------------------------


def aged(store: FileStore, key: str, when: dt.datetime) -> None:
    path = store.root / key
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_the_check_names_orphans_and_missing_objects_and_touches_nothing(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, _ = rings
    keys = sorted(filled(tmp_path, old, 4))
    store = FileStore(tmp_path / "store")
    store.put("backup/elsewhere.bin", b"x")
    index = [(attachment_uuid(n), 1) for n in (0, 1, 2)] + [(attachment_uuid(9), 1)]
    report = check_consistency(store, index, now=NOW)
    assert report.objects == 4 and report.index_entries == 4
    assert report.orphans == [object_key("", attachment_uuid(3), 1)]
    assert report.missing == [object_key("", attachment_uuid(9), 1)]
    assert report.deleted == [] and report.foreign_objects == 1
    assert sorted(o.key for o in store.list()) == sorted([*keys, "backup/elsewhere.bin"])
    assert report.as_dict()["orphans"] == report.orphans


def test_only_orphans_older_than_the_bound_are_deleted(
    tmp_path: Path, rings: tuple[KeyRing, KeyRing]
) -> None:
    old, _ = rings
    keys = sorted(filled(tmp_path, old, 3))
    store = FileStore(tmp_path / "store")
    by_uuid = {object_key("", attachment_uuid(n), 1): n for n in range(3)}
    stale, fresh = (k for k in keys if by_uuid[k] != 0)
    aged(store, stale, NOW - dt.timedelta(days=3))
    aged(store, fresh, NOW - dt.timedelta(minutes=5))  # an upload in flight looks the same
    report = check_consistency(
        store,
        [(attachment_uuid(0), 1)],
        delete_orphans_older_than=dt.timedelta(hours=24),
        now=NOW,
    )
    assert sorted(report.orphans) == sorted([stale, fresh])
    assert report.deleted == [stale] and report.young_orphans_kept == 1
    left = {o.key for o in store.list()}
    assert stale not in left and fresh in left


def test_the_check_keeps_to_its_prefix(tmp_path: Path, rings: tuple[KeyRing, KeyRing]) -> None:
    old, _ = rings
    filled(tmp_path, old, 2, prefix="central/")
    store = FileStore(tmp_path / "store")
    index = [(attachment_uuid(0), 1), (attachment_uuid(1), 1)]
    report = check_consistency(store, index, prefix="central/", now=NOW)
    assert (report.objects, report.orphans, report.missing) == (2, [], [])


def test_the_index_is_read_only_from_a_postgresql_indexed_orthanc() -> None:
    with pytest.raises(StorageError, match="PostgreSQL index"):
        orthanc_pg_attachments({"PostgreSQL": {"EnableIndex": False}})
