import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from imgcloud.errors import ConfigurationError, IntegrityError, ObjectNotFound
from imgcloud.storage.archive import EncryptedArchive, KeyRingSource
from imgcloud.storage.backends import FileStore
from imgcloud.storage.envelope import Algorithm
from imgcloud.storage.keyring import KeyRing, write_key_ring
from imgcloud.storage.object_keys import object_key, parse_object_key
from imgcloud.storage.settings import storage_settings


def test_object_keys_spread_by_uuid_and_parse_back() -> None:
    u = "3f2a9c1e-1111-4222-8333-444455556666"
    key = object_key("archive/", u.upper(), 1)
    assert key == f"archive/3f/2a/{u}.1"
    assert parse_object_key("archive/", key) == (u, 1)
    assert parse_object_key("archive/", "archive/00/00/" + u + ".1") is None  # wrong shard
    assert parse_object_key("other/", key) is None
    with pytest.raises(ValueError):
        object_key("", "../../etc/passwd", 1)


@pytest.fixture
def archive(tmp_path: Path) -> EncryptedArchive:
    ring_path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), ring_path)
    return EncryptedArchive(
        FileStore(tmp_path / "objects"), KeyRingSource(ring_path, 0), Algorithm.AES_256_GCM
    )


def test_create_read_remove(archive: EncryptedArchive, tmp_path: Path) -> None:
    u = str(uuid.uuid4())
    data = b"DICM" + os.urandom(5000)
    archive.create(u, 1, data)
    stored = (tmp_path / "objects" / object_key("", u, 1)).read_bytes()
    assert b"DICM" not in stored
    assert archive.read(u, 1) == data
    archive.remove(u, 1)
    with pytest.raises(ObjectNotFound):
        archive.read(u, 1)


def test_tampered_file_raises_integrity_error(archive: EncryptedArchive, tmp_path: Path) -> None:
    u = str(uuid.uuid4())
    archive.create(u, 1, b"x" * 1000)
    path = tmp_path / "objects" / object_key("", u, 1)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=object_key("", u, 1)):
        archive.read(u, 1)


class Scripted(FileStore):
    """A store that may answer a scripted copy of a key before the stored one (as a copy
    read ahead before the object was rewritten), with the read-ahead store's get_fresh."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.first: dict[str, bytes] = {}
        self.reads = 0
        self.fresh_reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return self.first.pop(key, None) or super().get(key)

    def get_fresh(self, key: str) -> bytes:
        self.fresh_reads += 1
        return super().get(key)


def flipped(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[-100] ^= 0xFF
    return bytes(out)


@pytest.fixture
def scripted(tmp_path: Path) -> tuple[EncryptedArchive, Scripted]:
    ring_path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), ring_path)
    store = Scripted(tmp_path / "objects")
    return EncryptedArchive(store, KeyRingSource(ring_path, 0), Algorithm.AES_256_GCM), store


def test_a_stale_copy_that_fails_is_read_again_from_the_store(
    scripted: tuple[EncryptedArchive, Scripted], caplog: pytest.LogCaptureFixture
) -> None:
    archive, store = scripted
    u = str(uuid.uuid4())
    archive.create(u, 1, b"y" * 1000)
    key = object_key("", u, 1)
    store.first[key] = flipped(store.get(key))
    store.reads = 0
    assert archive.read(u, 1) == b"y" * 1000  # the store's own copy, after the stale one
    assert (store.reads, store.fresh_reads) == (1, 1)
    assert f"object {key}: a copy failed to open" in caplog.text  # never silent
    assert archive.read(u, 1) == b"y" * 1000 and (store.reads, store.fresh_reads) == (2, 1)


def test_a_tampered_object_fails_after_its_second_read(
    scripted: tuple[EncryptedArchive, Scripted], tmp_path: Path
) -> None:
    archive, store = scripted
    u = str(uuid.uuid4())
    archive.create(u, 1, b"z" * 1000)
    path = tmp_path / "objects" / object_key("", u, 1)
    path.write_bytes(flipped(path.read_bytes()))
    with pytest.raises(IntegrityError, match=object_key("", u, 1)):
        archive.read(u, 1)
    assert (store.reads, store.fresh_reads) == (1, 1)


def test_the_second_read_is_held_to_the_same_name(
    scripted: tuple[EncryptedArchive, Scripted], tmp_path: Path
) -> None:
    """A valid object of another name, swapped in for the second read, still fails."""
    archive, store = scripted
    victim, other = str(uuid.uuid4()), str(uuid.uuid4())
    archive.create(victim, 1, b"v" * 1000)
    archive.create(other, 1, b"o" * 1000)
    victim_key = object_key("", victim, 1)
    store.first[victim_key] = flipped(store.get(victim_key))
    path = tmp_path / "objects" / victim_key
    path.write_bytes((tmp_path / "objects" / object_key("", other, 1)).read_bytes())
    with pytest.raises(IntegrityError, match=victim_key):
        archive.read(victim, 1)


def test_without_read_ahead_a_failing_copy_is_not_read_twice(
    archive: EncryptedArchive, tmp_path: Path
) -> None:
    u = str(uuid.uuid4())
    archive.create(u, 1, b"w" * 1000)
    path = tmp_path / "objects" / object_key("", u, 1)
    path.write_bytes(flipped(path.read_bytes()))
    assert not hasattr(archive.store, "get_fresh")  # FileStore: read-after-write consistent
    with pytest.raises(IntegrityError):
        archive.read(u, 1)


def test_key_ring_change_is_picked_up_without_restart(
    archive: EncryptedArchive, tmp_path: Path
) -> None:
    ring_path = tmp_path / "ring.json"
    old = str(uuid.uuid4())
    archive.create(old, 1, b"old")
    ring = KeyRing.from_file(ring_path, "x").with_key("k2").promoted("k2")
    write_key_ring(ring, ring_path)
    os.utime(ring_path, (1, 1))  # a different mtime even on coarse clocks
    new = str(uuid.uuid4())
    archive.create(new, 1, b"new")
    assert archive.keys.get().current_id == "k2"
    assert (archive.read(old, 1), archive.read(new, 1)) == (b"old", b"new")


def test_invalid_key_ring_change_keeps_the_last_good_ring(
    archive: EncryptedArchive, tmp_path: Path
) -> None:
    (tmp_path / "ring.json").write_text("{broken")
    os.utime(tmp_path / "ring.json", (2, 2))
    assert archive.keys.get().current_id == "k1"


def config(storage: dict[str, Any]) -> dict[str, Any]:
    return {"ImagingCloud": {"Role": "central", "Storage": storage}}


def test_no_storage_section_means_orthanc_default() -> None:
    assert storage_settings({"ImagingCloud": {"Role": "central"}}) is None


def test_s3_settings_with_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"AccessKey": "AK", "SecretKey": "SK"}))
    settings = storage_settings(
        config(
            {
                "Backend": "s3",
                "KeyRingFile": "/k.json",
                "Algorithm": "sm4-gcm",
                "S3": {
                    "Bucket": "b",
                    "Endpoint": "http://127.0.0.1:1",
                    "CredentialsFile": str(creds),
                    "PoolSize": 8,
                },
            }
        )
    )
    assert settings is not None and settings.s3 is not None
    assert settings.algorithm is Algorithm.SM4_GCM
    assert (settings.s3.access_key, settings.s3.pool_size) == ("AK", 8)
    assert "SK" not in repr(settings.s3)


@pytest.mark.parametrize(
    ("storage", "setting"),
    [
        ({"Backend": "tape"}, "Storage.Backend"),
        ({"Backend": "s3"}, "Storage.KeyRingFile"),
        ({"Backend": "s3", "KeyRingFile": "/k", "Algorithm": "des"}, "Storage.Algorithm"),
        ({"Backend": "s3", "KeyRingFile": "/k"}, "Storage.S3"),
        ({"Backend": "s3", "KeyRingFile": "/k", "S3": {}}, "Storage.S3.Bucket"),
        (
            {"Backend": "s3", "KeyRingFile": "/k", "S3": {"Bucket": "b"}},
            "Storage.S3.CredentialsFile",
        ),
        (
            {
                "Backend": "s3",
                "KeyRingFile": "/k",
                "S3": {"Bucket": "b", "CredentialsFile": "/nonexistent"},
            },
            "Storage.S3.CredentialsFile",
        ),
        ({"Backend": "filesystem", "KeyRingFile": "/k"}, "Storage.Filesystem.Root"),
    ],
)
def test_invalid_storage_settings_name_the_setting(
    storage: dict[str, Any], setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGCLOUD_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("IMGCLOUD_S3_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ImagingCloud." + setting.replace(".", r"\.")):
        storage_settings(config(storage))


def test_s3_pool_size_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLOUD_S3_ACCESS_KEY", "a")
    monkeypatch.setenv("IMGCLOUD_S3_SECRET_KEY", "b")
    with pytest.raises(ConfigurationError, match=r"S3\.PoolSize"):
        storage_settings(
            config({"Backend": "s3", "KeyRingFile": "/k", "S3": {"Bucket": "b", "PoolSize": 0}})
        )
