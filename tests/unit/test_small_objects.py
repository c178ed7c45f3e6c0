"""Small attachments beside the object store (imgcloud.storage.small_objects): content type 3
goes to the small store and everything else to the object store, a type-3 object left in the
object store stays readable and removable, both listings merge in name order, a rewrap walks
each store on its own and never brings back an object deleted meanwhile, and the setting's
default is PostgreSQL on central only. The PostgreSQL side is an in-memory stand-in here;
tests/integration/test_small_attachments.py runs the real one."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from imgcloud.errors import ConfigurationError, ObjectNotFound, StorageUnavailable
from imgcloud.storage.archive import EncryptedArchive, KeyRingSource
from imgcloud.storage.backends import FileStore, StoredObject
from imgcloud.storage.envelope import Algorithm, key_id_of
from imgcloud.storage.keyring import KeyRing, write_key_ring
from imgcloud.storage.maintenance import check_consistency, objects_by_key, rewrap_all, store_parts
from imgcloud.storage.object_keys import object_key
from imgcloud.storage.settings import storage_settings
from imgcloud.storage.small_objects import PostgresStore, TieredStore
from psycopg_pool import PoolTimeout

T0 = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


class MemoryRows:
    """What PostgresStore offers, in a dict (remove and replace as its SQL does them)."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.deleted_during_get: set[str] = set()

    def put(self, key: str, data: bytes) -> None:
        self.rows[key] = data

    def get(self, key: str) -> bytes:
        if key not in self.rows:
            raise ObjectNotFound(f"object {key}: not found")
        blob = self.rows[key]
        if key in self.deleted_during_get:  # Orthanc deletes it while a rewrap holds it
            del self.rows[key]
        return blob

    def remove(self, key: str) -> bool:
        return self.rows.pop(key, None) is not None

    def delete(self, key: str) -> None:
        self.remove(key)

    def replace(self, key: str, old: bytes, new: bytes) -> bool:
        if self.rows.get(key) != old:
            return False
        self.rows[key] = new
        return True

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        for key in sorted(self.rows):
            if key.startswith(prefix) and key > start_after:
                yield StoredObject(key, len(self.rows[key]), T0)

    def close(self) -> None:
        pass


def uuid_n(n: int) -> str:
    return str(uuid.UUID(int=n * 0x1111_0000_0000_0000_0000_0000_0000 + 5))


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FileStore, MemoryRows, TieredStore]:
    large, small = FileStore(tmp_path / "objects"), MemoryRows()
    return large, small, TieredStore(large, small)  # type: ignore[arg-type]


@pytest.fixture
def ring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    return path


def test_the_small_type_goes_to_the_rows_and_the_file_to_the_object_store(parts) -> None:
    large, small, tiered = parts
    file_key, head_key = object_key("", uuid_n(1), 1), object_key("", uuid_n(1), 3)
    tiered.put(file_key, b"sealed file")
    tiered.put(head_key, b"sealed head")
    assert [o.key for o in large.list()] == [file_key]
    assert small.rows == {head_key: b"sealed head"}
    assert (tiered.get(file_key), tiered.get(head_key)) == (b"sealed file", b"sealed head")
    tiered.delete(head_key)
    tiered.delete(file_key)
    assert small.rows == {} and list(large.list()) == []


def test_a_small_object_left_in_the_object_store_is_read_and_removed_there(parts) -> None:
    large, _small, tiered = parts
    legacy = object_key("", uuid_n(2), 3)
    large.put(legacy, b"written by an earlier release")
    assert tiered.get(legacy) == b"written by an earlier release"
    tiered.delete(legacy)
    assert list(large.list()) == []
    with pytest.raises(ObjectNotFound):
        tiered.get(legacy)


def test_a_node_set_to_object_store_writes_heads_to_the_bucket_and_still_sees_rows(
    tmp_path: Path, ring_file: Path
) -> None:
    """The table is shared: a node with "SmallAttachments": "object-store" must still read,
    remove and rewrap the rows other nodes wrote, or a retire would strand them (review 2)."""
    large, small = FileStore(tmp_path / "objects"), MemoryRows()
    tiered = TieredStore(large, small, write_small=False)  # type: ignore[arg-type]
    mine, theirs = object_key("", uuid_n(3), 3), object_key("", uuid_n(4), 3)
    tiered.put(mine, b"head written here")
    small.rows[theirs] = b"head written by another node"
    assert [o.key for o in large.list()] == [mine] and theirs in small.rows
    assert tiered.get(theirs) == b"head written by another node"
    assert sorted(o.key for o in tiered.list()) == sorted([mine, theirs])
    tiered.delete(theirs)
    assert theirs not in small.rows


def test_listing_merges_both_stores_in_name_order(parts) -> None:
    large, _small, tiered = parts
    keys = [object_key("", uuid_n(n), t) for n in range(1, 6) for t in (1, 3)]
    for key in keys:
        tiered.put(key, b"x")
    assert [o.key for o in tiered.list()] == sorted(keys)
    assert [o.key for o in tiered.list(start_after=keys[3])] == sorted(keys)[4:]
    assert set(store_parts(tiered)) == {"object-store", "postgresql"}
    assert store_parts(large) == {"object-store": large}


def test_check_and_key_census_see_the_rows(tmp_path: Path, parts, ring_file: Path) -> None:
    _large, small, tiered = parts
    archive = EncryptedArchive(tiered, KeyRingSource(ring_file), Algorithm.AES_256_GCM)
    archive.create(uuid_n(1), 1, b"DICM file")
    archive.create(uuid_n(1), 3, b"DICM head")
    orphan = object_key("", uuid_n(9), 3)
    small.put(orphan, b"left by a crash")
    report = check_consistency(
        tiered,
        [(uuid_n(1), 1), (uuid_n(1), 3), (uuid_n(2), 3)],
        delete_orphans_older_than=dt.timedelta(0),
        now=T0,
    )
    assert report.orphans == [orphan] and report.deleted == [orphan] and orphan not in small.rows
    assert report.missing == [object_key("", uuid_n(2), 3)]
    assert objects_by_key(tiered) == {"k1": 2}


def test_rewrap_of_the_rows_never_brings_back_a_deleted_one(parts, ring_file: Path) -> None:
    _large, small, tiered = parts
    archive = EncryptedArchive(tiered, KeyRingSource(ring_file), Algorithm.AES_256_GCM)
    for n in (1, 2):
        archive.create(uuid_n(n), 3, b"DICM head")
    gone = object_key("", uuid_n(2), 3)
    small.deleted_during_get.add(gone)
    new = archive.keys.get().with_key("k2").promoted("k2")
    report = rewrap_all(store_parts(tiered)["postgresql"], new)
    assert (report.rewrapped, report.vanished) == (1, 1)
    assert list(small.rows) == [object_key("", uuid_n(1), 3)]
    assert key_id_of(small.rows[object_key("", uuid_n(1), 3)], "") == "k2"


def storage(extra: dict[str, Any], pg: dict[str, Any] | None = None) -> dict[str, Any]:
    section = {"KeyRingFile": "/k.json", **extra}
    return {"ImagingCloud": {"Storage": section}, **({"PostgreSQL": pg} if pg else {})}


S3 = {"Backend": "s3", "S3": {"Bucket": "b", "Endpoint": "http://127.0.0.1:1"}}
INDEX = {"EnableIndex": True, "Database": "orthanc_central", "Username": "u", "Password": "pw"}


@pytest.fixture(autouse=True)
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLOUD_S3_ACCESS_KEY", "a")
    monkeypatch.setenv("IMGCLOUD_S3_SECRET_KEY", "b")


def test_postgresql_is_the_default_with_s3_and_a_postgresql_index() -> None:
    central = storage_settings(storage(S3, INDEX))
    assert central is not None and central.small_attachments == "postgresql"
    assert central.small_conninfo is not None
    assert central.small_conninfo["dbname"] == "orthanc_central"
    assert "pw" not in repr(central)
    chosen = storage_settings(storage({**S3, "SmallAttachments": "object-store"}, INDEX))
    assert chosen is not None and chosen.small_attachments == "object-store"
    # the table is shared: a node writing to the bucket still reaches the rows (review 2)
    assert chosen.small_conninfo == central.small_conninfo


@pytest.mark.parametrize(
    "extra, pg",
    [
        (S3, None),  # no PostgreSQL index: nowhere to keep them
        ({"Backend": "filesystem", "Filesystem": {"Root": "/x"}}, INDEX),  # an edge
    ],
)
def test_the_object_store_elsewhere(extra: dict[str, Any], pg: dict[str, Any] | None) -> None:
    settings = storage_settings(storage(extra, pg))
    assert settings is not None and settings.small_attachments == "object-store"
    assert settings.small_conninfo is None


def test_postgresql_without_an_index_or_an_unknown_choice_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"Storage\.SmallAttachments.*EnableIndex"):
        storage_settings(storage({**S3, "SmallAttachments": "postgresql"}))
    with pytest.raises(ConfigurationError, match=r"SmallAttachments"):
        storage_settings(storage({**S3, "SmallAttachments": "tape"}, INDEX))


class FakeConnection:
    def __init__(self, fail: BaseException | None, broken: bool) -> None:
        self.fail, self.broken = fail, broken

    def execute(self, query: str, params: tuple[Any, ...]) -> Any:
        if self.fail is not None:
            raise self.fail

        class Cursor:
            description = None
            rowcount = 1

        return Cursor()


class FakePool:
    """Lends the given connections in turn, as psycopg_pool's connection() does."""

    def __init__(self, *connections: FakeConnection) -> None:
        self.connections = list(connections)
        self.lent = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        self.lent += 1
        yield self.connections.pop(0)


def store_on(pool: FakePool) -> PostgresStore:
    store = PostgresStore.__new__(PostgresStore)
    store._pool = pool  # type: ignore[assignment]
    return store


def test_a_connection_broken_since_it_was_opened_is_replaced_once() -> None:
    key = object_key("", uuid_n(1), 3)
    pool = FakePool(
        FakeConnection(psycopg.OperationalError("gone"), broken=True), FakeConnection(None, False)
    )
    assert store_on(pool).remove(key) is True and pool.lent == 2
    twice = FakePool(
        FakeConnection(psycopg.OperationalError("gone"), broken=True),
        FakeConnection(psycopg.OperationalError("still gone"), broken=True),
    )
    with pytest.raises(StorageUnavailable, match=f"PostgreSQL delete {key}: OperationalError"):
        store_on(twice).remove(key)


def test_a_statement_timeout_or_a_pool_timeout_is_not_retried() -> None:
    key = object_key("", uuid_n(1), 3)
    cancelled = FakePool(FakeConnection(psycopg.errors.QueryCanceled("timeout"), broken=False))
    with pytest.raises(StorageUnavailable, match="QueryCanceled"):
        store_on(cancelled).put(key, b"x")
    assert cancelled.lent == 1

    class Exhausted(FakePool):
        @contextlib.contextmanager
        def connection(self) -> Iterator[FakeConnection]:
            self.lent += 1
            raise PoolTimeout("no connection in 5 s")
            yield  # pragma: no cover

    exhausted = Exhausted()
    with pytest.raises(StorageUnavailable, match="PoolTimeout"):
        store_on(exhausted).get(key)
    assert exhausted.lent == 1
