"""The series read-ahead's logic against an in-memory store (the stack's test is
tests/integration/test_read_ahead.py): what it fetches ahead, its bounds, and that the
archive above it still verifies every object at read time."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from imgcloud.errors import ConfigurationError, IntegrityError, ObjectNotFound, StorageUnavailable
from imgcloud.plugin_settings import CentralSettings
from imgcloud.storage.archive import EncryptedArchive, KeyRingSource
from imgcloud.storage.backends import StoredObject
from imgcloud.storage.envelope import Algorithm, key_id_of, rewrap
from imgcloud.storage.keyring import KeyRing, write_key_ring
from imgcloud.storage.object_keys import object_key
from imgcloud.storage.read_ahead import ReadAhead, ReadAheadSettings, ReadAheadStore


class MemoryStore:
    """A thread-safe dict of objects that counts GETs and can fail chosen ones."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        self.fail_once: set[str] = set()
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        with self.lock:
            self.gets[key] += 1
            if key in self.fail_once:
                self.fail_once.discard(key)
                raise StorageUnavailable(f"S3 get {key}: SlowDown")
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(f"object {key}: not found") from None

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        return iter(())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def series(store: MemoryStore, count: int, size: int = 3000) -> list[str]:
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    for u in uuids:
        store.put(object_key("", u, 1), os.urandom(size))
    return uuids


def announced(
    store: MemoryStore, uuids: list[str], settings: ReadAheadSettings, size: int = 3000, **kw
) -> ReadAheadStore:
    """A read-ahead over `store` told that the series `uuids` is about to be read."""
    ahead = ReadAheadStore(store, settings, **kw)
    ahead.announce([[(u, size) for u in uuids]])
    return ahead


def settle(ahead: ReadAheadStore) -> None:
    """Wait until every prefetch started so far has finished."""
    for entry in list(ahead._entries.values()):
        try:
            entry.future.result(timeout=10)
        except Exception:  # noqa: S110 - a failed prefetch is what some tests want
            pass


def test_a_series_read_in_order_costs_one_get_per_object() -> None:
    store = MemoryStore()
    uuids = series(store, 30)
    ahead = announced(store, uuids, ReadAheadSettings(depth=4))
    for u in uuids:
        key = object_key("", u, 1)
        assert ahead.get(key) == store.objects[key]
    settle(ahead)
    assert set(store.gets.values()) == {1}
    stats = ahead.stats()
    assert stats["misses"] == 1 and stats["hits"] + stats["waited"] == 29
    assert stats["held"] == 0 and stats["held_bytes"] == 0
    ahead.close()


def test_other_attachment_types_and_unannounced_reads_pass_straight_through() -> None:
    store = MemoryStore()
    uuids = series(store, 3)
    store.put(object_key("", uuids[0], 3), b"until pixel data")
    ahead = announced(store, uuids, ReadAheadSettings())
    assert ahead.get(object_key("", uuids[0], 3)) == b"until pixel data"
    assert ahead.stats()["prefetched"] == 0
    other = series(store, 2)
    assert ahead.get(object_key("", other[0], 1)) == store.objects[object_key("", other[0], 1)]
    assert ahead.stats()["prefetched"] == 0 and ahead.stats()["misses"] == 1


def test_a_failed_prefetch_means_the_read_does_its_own_get() -> None:
    store = MemoryStore()
    uuids = series(store, 5)
    second = object_key("", uuids[1], 1)
    store.fail_once.add(second)
    ahead = announced(store, uuids, ReadAheadSettings(depth=4))
    ahead.get(object_key("", uuids[0], 1))
    settle(ahead)
    assert ahead.get(second) == store.objects[second]
    assert store.gets[second] == 2 and ahead.stats()["failed"] == 1


def test_a_missing_object_raises_the_reads_own_error() -> None:
    store = MemoryStore()
    uuids = series(store, 3)
    gone = object_key("", uuids[1], 1)
    del store.objects[gone]
    ahead = announced(store, uuids, ReadAheadSettings())
    ahead.get(object_key("", uuids[0], 1))
    with pytest.raises(ObjectNotFound, match=gone):
        ahead.get(gone)
    assert ahead.get(object_key("", uuids[2], 1)) == store.objects[object_key("", uuids[2], 1)]


def test_held_bytes_never_pass_the_bound() -> None:
    store = MemoryStore()
    size = 400 * 1024
    uuids = series(store, 20, size)
    settings = ReadAheadSettings(depth=16, max_bytes=1024 * 1024)
    ahead = announced(store, uuids, settings, size)
    ahead.get(object_key("", uuids[0], 1))
    settle(ahead)
    stats = ahead.stats()
    assert stats["held"] == 2 and stats["held_bytes"] <= settings.max_bytes
    assert stats["skipped_full"] == 1
    for u in uuids[1:]:  # reading on frees room for the next ones
        ahead.get(object_key("", u, 1))
        assert ahead.stats()["held_bytes"] <= settings.max_bytes
    settle(ahead)
    assert set(store.gets.values()) == {1}


def test_entries_unread_expire() -> None:
    store, clock = MemoryStore(), Clock()
    uuids = series(store, 4)
    ahead = announced(store, uuids, ReadAheadSettings(ttl_s=5), clock=clock)
    ahead.get(object_key("", uuids[0], 1))
    settle(ahead)
    clock.now += 6
    later = object_key("", uuids[1], 1)
    assert ahead.get(later) == store.objects[later]
    assert store.gets[later] == 2 and ahead.stats()["dropped"] >= 1


def wado_read_ahead(
    tmp_path: Path, order_of
) -> tuple[ReadAhead, EncryptedArchive, MemoryStore, list[str], dict[str, bytes]]:
    """A read-ahead on an archive of 6 sealed instances "i0".."i5" of one series, whose
    order Orthanc lists them in is order_of's."""
    ring_path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), ring_path)
    store = MemoryStore()
    archive = EncryptedArchive(store, KeyRingSource(ring_path, 0), Algorithm.AES_256_GCM)
    plain = {str(uuid.uuid4()): os.urandom(5000) for _ in range(6)}
    for u, data in plain.items():
        archive.create(u, 1, data)
    files = {f"i{n}": (u, 5000) for n, u in enumerate(plain)}

    def files_of(ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        return {i: files[i] for i in ids if i in files}

    ahead = ReadAhead(archive, ReadAheadSettings(), order_of, files_of)
    return ahead, archive, store, list(plain), plain


def test_a_wado_rs_retrieval_announces_its_series_in_orthancs_order(tmp_path: Path) -> None:
    asked: list[tuple[str, str | None]] = []
    orthancs_order = ["i3", "i0", "i5", "i1", "i4", "i2"]

    def order_of(study: str, series: str | None) -> list[list[str]]:
        asked.append((study, series))
        return [[*orthancs_order, "deleted meanwhile"]]

    ahead, archive, store, uuids, plain = wado_read_ahead(tmp_path, order_of)
    # one instance's frames or metadata announce nothing: no prefetch for single reads
    ahead.retrieval(1, "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1")
    ahead.retrieval(1, "/dicom-web/studies/1.2.3/series/4.5/metadata")
    ahead.retrieval("GET", "/dicom-web/studies/1.2.3/series/4.5")
    ahead.retrieval("GET", "/dicom-web/studies/1.2.3/series/4.5/")  # the same: looked up once
    ahead.retrieval(1, "/dicom-web/studies/1.2.3")
    ahead.retrieval(2, "/dicom-web/studies/9.9")  # a POST (STOW-RS) announces nothing
    ahead.retrieval(1, "/instances")
    assert asked == [("1.2.3", "4.5"), ("1.2.3", None)]
    for i in orthancs_order:
        u = uuids[int(i[1])]
        assert archive.read(u, 1) == plain[u]
    settle(ahead.store)
    assert set(store.gets.values()) == {1}
    assert ahead.stats()["misses"] == 1 and ahead.stats()["announced"] == 2
    ahead.close()


def test_a_failing_lookup_only_turns_read_ahead_off(tmp_path: Path) -> None:
    def broken(study: str, series: str | None) -> list[list[str]]:
        raise OSError("unknown study")

    ahead, archive, _store, uuids, plain = wado_read_ahead(tmp_path, broken)
    ahead.retrieval(1, "/dicom-web/studies/1.2.3")
    assert archive.read(uuids[0], 1) == plain[uuids[0]]
    assert ahead.stats()["lookup_errors"] == 1 and ahead.stats()["prefetched"] == 0


def test_delete_drops_the_entry() -> None:
    store = MemoryStore()
    uuids = series(store, 3)
    ahead = announced(store, uuids, ReadAheadSettings())
    ahead.get(object_key("", uuids[0], 1))
    settle(ahead)
    gone = object_key("", uuids[1], 1)
    ahead.delete(gone)
    with pytest.raises(ObjectNotFound):
        ahead.get(gone)


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[EncryptedArchive, MemoryStore, list[str], dict[str, bytes]]:
    ring_path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), ring_path)
    store = MemoryStore()
    archive = EncryptedArchive(store, KeyRingSource(ring_path, 0), Algorithm.AES_256_GCM)
    plain = {str(uuid.uuid4()): os.urandom(5000) for _ in range(6)}
    for u, data in plain.items():
        archive.create(u, 1, data)
    uuids = list(plain)
    archive.store = announced(store, uuids, ReadAheadSettings(), 5000)
    return archive, store, uuids, plain


def test_a_tampered_object_fails_alone_through_the_archive(sealed) -> None:
    archive, store, uuids, plain = sealed
    key = object_key("", uuids[2], 1)
    blob = bytearray(store.objects[key])
    blob[-50] ^= 0x01
    store.objects[key] = bytes(blob)
    for u in uuids:
        if u == uuids[2]:
            with pytest.raises(IntegrityError, match=key):
                archive.read(u, 1)
        else:
            assert archive.read(u, 1) == plain[u]
    assert archive.store.stats()["hits"] + archive.store.stats()["waited"] == 5


def test_ciphertext_fetched_before_a_rotation_opens_with_the_ring_of_the_read(
    sealed, tmp_path: Path
) -> None:
    archive, _store, uuids, plain = sealed
    assert archive.read(uuids[0], 1) == plain[uuids[0]]  # the rest is fetched ahead
    settle(archive.store)
    ring = KeyRing.from_file(tmp_path / "ring.json", "ring")
    write_key_ring(ring.with_key("k2").promoted("k2"), tmp_path / "ring.json")
    assert archive.keys.get(force=True).current_id == "k2"
    for u in uuids[1:]:
        assert archive.read(u, 1) == plain[u]


def rewrap_and_retire_k1(archive: EncryptedArchive, store: MemoryStore, ring_path: Path) -> None:
    """What the storage CLI does while the archive serves: k2 added and made current, every
    object in the store re-headed under k2 (one PUT each, straight to the store), k1
    retired from the ring file."""
    ring = KeyRing.from_file(ring_path, "ring").with_key("k2").promoted("k2")
    write_key_ring(ring, ring_path)
    for key, blob in list(store.objects.items()):
        moved = rewrap(blob, object_key=key, ring=ring)
        assert moved is not None
        store.put(key, moved)
    write_key_ring(ring.without("k1"), ring_path)
    assert archive.keys.get(force=True).key_ids == ("k2",)


def test_a_copy_fetched_ahead_of_a_rewrap_and_retire_is_read_again(tmp_path: Path) -> None:
    """The cached ciphertext names k1, which the ring no longer holds once it is retired:
    served from the cache, the read would fail; it does its own GET of the rewrapped
    object instead."""

    def order_of(study: str, series: str | None) -> list[list[str]]:
        return [[f"i{n}" for n in range(6)]]

    ahead, archive, store, uuids, plain = wado_read_ahead(tmp_path, order_of)
    ahead.retrieval(1, "/dicom-web/studies/1.2.3")
    assert archive.read(uuids[0], 1) == plain[uuids[0]]
    settle(ahead.store)
    cached = {k: e.future.result() for k, e in ahead.store._entries.items()}
    assert len(cached) == 5 and {key_id_of(b, k) for k, b in cached.items()} == {"k1"}
    rewrap_and_retire_k1(archive, store, tmp_path / "ring.json")
    for u in uuids[1:]:
        assert archive.read(u, 1) == plain[u]
    key = object_key("", uuids[1], 1)
    assert store.gets[key] == 2  # the prefetch, then the read's own GET
    stats = ahead.stats()
    assert stats["refetched"] == 5 and stats["hits"] + stats["waited"] == 0
    ahead.close()


def test_without_the_ring_check_the_archive_reads_a_failing_copy_again(
    sealed, tmp_path: Path
) -> None:
    """The failure the check prevents, caught one step later: a read-ahead store not told
    about the ring serves the pre-rewrap copy, which cannot be opened (k1 is retired); the
    archive then reads the object once more from the store, as it is now."""
    archive, store, uuids, plain = sealed
    assert archive.read(uuids[0], 1) == plain[uuids[0]]
    settle(archive.store)
    rewrap_and_retire_k1(archive, store, tmp_path / "ring.json")
    before = archive.store.stats()
    assert archive.read(uuids[1], 1) == plain[uuids[1]]
    after = archive.store.stats()
    assert after["hits"] - before["hits"] == 1  # the stale copy was served first
    assert after["refetched"] - before["refetched"] == 1  # then the store's own
    assert store.gets[object_key("", uuids[1], 1)] == 2


def test_copies_under_a_key_still_in_the_ring_are_served(tmp_path: Path) -> None:
    """k2 made current and the objects rewrapped, k1 not retired yet: the cached copies
    under k1 still open, so they are served without a second GET."""

    def order_of(study: str, series: str | None) -> list[list[str]]:
        return [[f"i{n}" for n in range(6)]]

    ahead, archive, store, uuids, plain = wado_read_ahead(tmp_path, order_of)
    ahead.retrieval(1, "/dicom-web/studies/1.2.3")
    archive.read(uuids[0], 1)
    settle(ahead.store)
    ring_path = tmp_path / "ring.json"
    write_key_ring(KeyRing.from_file(ring_path, "ring").with_key("k2").promoted("k2"), ring_path)
    for u in uuids[1:]:
        assert archive.read(u, 1) == plain[u]
    assert set(store.gets.values()) == {1}
    assert ahead.stats()["refetched"] == 0 and ahead.stats()["hits"] == 5
    ahead.close()


def test_a_cached_copy_with_a_broken_header_is_read_again(tmp_path: Path) -> None:
    def order_of(study: str, series: str | None) -> list[list[str]]:
        return [[f"i{n}" for n in range(6)]]

    ahead, archive, store, uuids, plain = wado_read_ahead(tmp_path, order_of)
    ahead.retrieval(1, "/dicom-web/studies/1.2.3")
    key = object_key("", uuids[1], 1)
    good = store.objects[key]
    store.objects[key] = b"XYZ" + good[3:]  # the prefetch gets a copy without the magic
    archive.read(uuids[0], 1)
    settle(ahead.store)
    store.objects[key] = good
    assert archive.read(uuids[1], 1) == plain[uuids[1]]
    assert store.gets[key] == 2 and ahead.stats()["refetched"] == 1
    ahead.close()


CENTRAL = {
    "PostgreSQL": {"EnableIndex": True, "Host": "127.0.0.1", "Port": 9, "Database": "x"},
    "ImagingCloud": {"Role": "central"},
}


def test_settings_default_on_and_can_be_switched_off() -> None:
    assert CentralSettings.from_orthanc(CENTRAL).read_ahead.enabled is True
    off = {**CENTRAL, "ImagingCloud": {"Role": "central", "ReadAhead": {"Enabled": False}}}
    assert CentralSettings.from_orthanc(off).read_ahead.enabled is False


def test_settings_out_of_range_name_the_setting() -> None:
    bad = {**CENTRAL, "ImagingCloud": {"Role": "central", "ReadAhead": {"Depth": 0}}}
    with pytest.raises(ConfigurationError, match=r"ImagingCloud\.ReadAhead"):
        CentralSettings.from_orthanc(bad)
