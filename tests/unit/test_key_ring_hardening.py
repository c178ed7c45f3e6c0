"""What keeps a key ring's bytes where they belong (security review of the two-phase
rotation, #19 4): the key check value that lets nodes compare bytes, not ids; the ring
writer that never follows a link or leaves a readable or partial file; the lock file; the
key file that must be a regular file of ours alone. Failures never print key material."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import threading
from pathlib import Path

import pytest
from imgcloud.errors import KeyRingError
from imgcloud.storage.keyring import (
    KeyRing,
    create_key_file,
    key_check_value,
    read_key_file,
    update_key_ring,
    write_key_ring,
)

MATERIAL = bytes(range(32))


def no_material_in(text: str, *materials: bytes) -> bool:
    return not any(m.hex() in text or repr(m) in text for m in materials)


# -- the key check value ---------------------------------------------------------------------


def test_the_check_value_tells_bytes_apart_not_ids() -> None:
    kcv = key_check_value(MATERIAL)
    assert len(kcv) == 16 and int(kcv, 16) >= 0
    assert key_check_value(bytes(MATERIAL)) == kcv
    assert key_check_value(bytes(reversed(MATERIAL))) != kcv
    # the reviewed definition: HMAC-SHA256(key, b"imgcloud key check value")[:8]
    assert kcv == hmac.new(MATERIAL, b"imgcloud key check value", "sha256").hexdigest()[:16]
    ring = KeyRing("k1", {"k1": MATERIAL}, 1).with_key("k2")
    assert ring.summary()["kcv"] == {"k1": kcv, "k2": ring.check_value("k2")}
    assert no_material_in(str(ring.summary()), MATERIAL, ring.get("k2") or b"")
    assert ring.check_value("k9") is None


def test_two_rings_agree_only_with_the_same_ids_bytes_and_current_key() -> None:
    ring = KeyRing("k1", {"k1": MATERIAL}, 1)
    assert ring.disagreement(KeyRing("k1", {"k1": bytes(MATERIAL)}, 7)) is None
    assert "other bytes under key id 'k1'" in (
        ring.disagreement(KeyRing("k1", {"k1": bytes(reversed(MATERIAL))})) or ""
    )
    assert "other key ids (differing: k2)" in (ring.disagreement(ring.with_key("k2")) or "")
    both = ring.with_key("k2", bytes(reversed(MATERIAL)))
    assert "current key 'k2', not 'k1'" in (both.disagreement(both.promoted("k2")) or "")
    # a rotation's pending key may be on one ring only, or current on one only
    assert ring.disagreement(both, pending="k2") is None
    assert both.disagreement(both.promoted("k2"), pending="k2") is None
    other = ring.with_key("k2", MATERIAL)  # pending, but other bytes: still refused
    assert "other bytes under key id 'k2'" in (both.disagreement(other, pending="k2") or "")


# -- the ring writer -------------------------------------------------------------------------


def test_a_leftover_readable_temporary_file_does_not_make_the_ring_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keyring.json"
    leftover = tmp_path / "keyring.json.tmp"  # the name earlier releases wrote through
    leftover.write_text("{}")
    leftover.chmod(0o644)
    old = os.umask(0)
    try:
        write_key_ring(KeyRing.generate("k1"), path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftover.read_text() == "{}"


def test_a_symlink_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    target = tmp_path / "attacker-readable"
    (tmp_path / "keyring.json.tmp").symlink_to(target)
    write_key_ring(KeyRing.generate("k1"), path)
    assert not target.exists()
    assert not path.is_symlink() and KeyRing.from_file(path, "x").current_id == "k1"


def test_a_ring_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    write_key_ring(KeyRing.generate("k1"), target)
    before = target.read_bytes()
    link = tmp_path / "keyring.json"
    link.symlink_to(target)
    with pytest.raises(KeyRingError, match="not a regular file"):
        write_key_ring(KeyRing.generate("k1"), link)
    assert link.is_symlink() and target.read_bytes() == before, "the link's target changed"
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyRingError, match="not a regular file"):
        write_key_ring(KeyRing.generate("k1"), tmp_path / "dangling.json")
    assert not (tmp_path / "nowhere").exists()


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)

    def full_disk(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_key_ring(KeyRing.generate("k2"), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]
    assert KeyRing.from_file(path, "x").current_id == "k1"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_new_ring_may_be_given_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path, owner=(10042, 10043))
    assert (path.stat().st_uid, path.stat().st_gid) == (10042, 10043)
    write_key_ring(KeyRing.generate("k1"), path)  # a replacement keeps it
    assert (path.stat().st_uid, path.stat().st_gid) == (10042, 10043)


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    target = tmp_path / "created-through-the-link"
    (tmp_path / "keyring.json.lock").symlink_to(target)
    with pytest.raises(KeyRingError, match="lock"):
        update_key_ring(path, lambda r: r.with_key("k2"))
    assert not target.exists()
    assert KeyRing.from_file(path, "x").key_ids == ("k1",)


def test_a_lock_path_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    os.mkfifo(tmp_path / "keyring.json.lock", 0o600)
    with pytest.raises(KeyRingError, match="key ring lock"):  # and never blocks
        update_key_ring(path, lambda r: r.with_key("k2"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_roots_lock_file_takes_the_rings_owner(tmp_path: Path) -> None:
    """The key folder holds the Orthanc service uid's files only (test_data_at_rest)."""
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    os.chown(path, 10042, 10043)
    update_key_ring(path, lambda r: r.with_key("k2"))
    lock = tmp_path / "keyring.json.lock"
    assert (lock.stat().st_uid, lock.stat().st_gid) == (10042, 10043)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


# -- the key file ----------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Someone who could create the path first (in /tmp) would plant a key they know."""
    path = tmp_path / "k2.key"
    create_key_file(path, "k2")
    os.chown(path, 65534, 65534)
    with pytest.raises(KeyRingError, match="owned by uid 65534"):
        read_key_file(path, "k2")


def test_a_fifo_as_key_file_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "k2.key"
    os.mkfifo(path, 0o600)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_key_file(path, "k2")
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # unblock it: open a writer end, so the thread can finish
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_key_file hung on a FIFO")
    assert isinstance(outcome[0], KeyRingError) and "not a regular file" in str(outcome[0])


def test_a_key_file_with_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k2.key"
    material = create_key_file(path, "k2")
    os.link(path, tmp_path / "copy")
    with pytest.raises(KeyRingError, match="2 hard links") as refused:
        read_key_file(path, "k2")
    assert no_material_in(str(refused.value), material)
    os.unlink(tmp_path / "copy")
    assert secrets.compare_digest(read_key_file(path, "k2"), material), "k2 read back differs"
