"""The master key ring (imgcloud.storage.keyring): its version, the two phases of a rotation
(add a key, make it current), retirement, the key file that carries one key to every node,
and no key material in any repr, error, log line or status summary."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import pytest
from imgcloud.errors import KeyRingError
from imgcloud.storage.archive import KeyRingSource
from imgcloud.storage.envelope import open_sealed, seal
from imgcloud.storage.keyring import (
    MASTER_KEY_BYTES,
    KeyRing,
    create_key_file,
    read_key_file,
    update_key_ring,
    write_key_ring,
)

MATERIAL = bytes(range(32))  # recognisable in every spelling below
SPELLINGS = (
    base64.b64encode(MATERIAL).decode(),
    MATERIAL.hex(),
    repr(MATERIAL),
    str(list(MATERIAL)),
)


def assert_no_material(text: str) -> None:
    # a boolean, so that a failure does not print the material it found
    leaked = any(spelling in text for spelling in SPELLINGS)
    assert not leaked, "key material in the text"


def ids_of(summary: dict) -> dict:
    """A status summary without its check values (tested in test_key_ring_hardening)."""
    return {k: v for k, v in summary.items() if k != "kcv"}


def legacy_file(path: Path) -> Path:
    """A ring as releases before the version wrote it."""
    path.write_text(
        json.dumps({"current": "k1", "keys": {"k1": base64.b64encode(MATERIAL).decode()}})
    )
    return path


# -- version ---------------------------------------------------------------------------------


def test_a_ring_without_a_version_reads_as_version_0_and_keeps_working(tmp_path: Path) -> None:
    ring = KeyRing.from_file(legacy_file(tmp_path / "ring.json"), "KeyRingFile")
    assert (ring.version, ring.current_id, ring.key_ids) == (0, "k1", ("k1",))
    blob = seal(b"pixels", object_key="o", attachment_type=1, ring=ring)
    assert open_sealed(blob, object_key="o", attachment_type=1, ring=ring) == b"pixels"
    update_key_ring(tmp_path / "ring.json", lambda r: r.with_key("k2"))
    assert json.loads((tmp_path / "ring.json").read_text())["version"] == 1


def test_every_change_increments_the_version_and_the_file_keeps_it(tmp_path: Path) -> None:
    ring = KeyRing.generate("k1")
    assert ring.version == 1
    added = ring.with_key("k2")
    promoted = added.promoted("k2")
    retired = promoted.without("k1")
    assert [r.version for r in (added, promoted, retired)] == [2, 3, 4]
    write_key_ring(retired, tmp_path / "ring.json")
    again = KeyRing.from_file(tmp_path / "ring.json", "KeyRingFile")
    assert (again.version, again.current_id, again.key_ids) == (4, "k2", ("k2",))


@pytest.mark.parametrize("version", [-1, "3", True, 2.5, None])
def test_a_version_that_is_not_a_whole_number_is_refused(version: object) -> None:
    doc = {"version": version, "current": "k1", "keys": {"k1": base64.b64encode(MATERIAL).decode()}}
    with pytest.raises(KeyRingError, match="'version' must"):
        KeyRing.from_json(json.dumps(doc), "KeyRingFile")


# -- the operations --------------------------------------------------------------------------


def test_an_added_key_is_readable_but_not_current() -> None:
    ring = KeyRing.generate("k1")
    added = ring.with_key("k2", MATERIAL)
    assert added.current_id == "k1" and added.key_ids == ("k1", "k2")
    assert added.get("k2") == MATERIAL and added.holds("k2", MATERIAL)
    assert not added.holds("k2", bytes(32)) and not added.holds("k9", MATERIAL)
    assert ring.key_ids == ("k1",)  # rings are values: the old one is unchanged


def test_the_same_material_on_two_nodes_opens_what_either_sealed() -> None:
    node_a = KeyRing.generate("k1").with_key("k2", MATERIAL).promoted("k2")
    node_b = KeyRing(node_a.current_id, {"k0": os.urandom(32), "k2": MATERIAL}, 7)
    blob = seal(b"pixels", object_key="o", attachment_type=1, ring=node_a)
    assert open_sealed(blob, object_key="o", attachment_type=1, ring=node_b) == b"pixels"


def test_adding_a_key_twice_or_badly_is_refused() -> None:
    ring = KeyRing.generate("k1").with_key("k2")
    with pytest.raises(KeyRingError, match="key 'k2' is in the ring already"):
        ring.with_key("k2", MATERIAL)
    with pytest.raises(KeyRingError, match="must be 32 bytes"):
        ring.with_key("k3", MATERIAL[:16])
    with pytest.raises(KeyRingError, match="must match"):
        ring.with_key("k 3")


def test_promoting_needs_the_key_in_the_ring_and_a_current_key_is_left_alone() -> None:
    ring = KeyRing.generate("k1")
    with pytest.raises(KeyRingError, match="'k2' is not in the ring; add it on every node"):
        ring.promoted("k2")
    assert ring.promoted("k1") is ring  # no change, no new version


def test_retiring_refuses_the_current_key_and_an_unknown_one() -> None:
    ring = KeyRing.generate("k1").with_key("k2")
    with pytest.raises(KeyRingError, match="current key cannot be retired"):
        ring.without("k1")
    with pytest.raises(KeyRingError, match="'k9' is not in the ring"):
        ring.without("k9")
    assert ring.without("k2").key_ids == ("k1",)


def test_an_unchanged_ring_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    before = path.stat()
    old, new = update_key_ring(path, lambda r: r.promoted("k1"))
    assert new is old and path.stat().st_ino == before.st_ino
    with pytest.raises(KeyRingError, match="not in the ring"):
        update_key_ring(path, lambda r: r.promoted("k2"))
    assert KeyRing.from_file(path, "x").version == 1


def test_two_quick_changes_are_both_picked_up(tmp_path: Path) -> None:
    """The file is replaced each time: a new inode even where both changes share an mtime."""
    path = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    source = KeyRingSource(path, check_every_s=0)
    update_key_ring(path, lambda r: r.with_key("k2"))
    os.utime(path, ns=(10**18, 10**18))
    assert ids_of(source.summary()) == {"version": 2, "current": "k1", "keys": ["k1", "k2"]}
    update_key_ring(path, lambda r: r.promoted("k2"))
    os.utime(path, ns=(10**18, 10**18))
    assert ids_of(source.summary()) == {"version": 3, "current": "k2", "keys": ["k1", "k2"]}


# -- the key file ----------------------------------------------------------------------------


def test_a_key_file_is_created_0600_once_and_read_back_for_its_id(tmp_path: Path) -> None:
    path = tmp_path / "k2.key"
    material = create_key_file(path, "k2")
    assert len(material) == MASTER_KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.compare_digest(read_key_file(path, "k2"), material), "k2 read back differs"
    with pytest.raises(KeyRingError, match="exists already"):
        create_key_file(path, "k2")  # never overwritten: another node may hold this copy
    assert secrets.compare_digest(read_key_file(path, "k2"), material), "k2 read back differs"
    with pytest.raises(KeyRingError, match="holds another key than 'k3'"):
        read_key_file(path, "k3")


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k2.key"
    create_key_file(path, "k2")
    path.chmod(0o640)
    with pytest.raises(KeyRingError, match="chmod 600"):
        read_key_file(path, "k2")


@pytest.mark.parametrize(
    "content",
    [
        "not json " + SPELLINGS[0],
        json.dumps({"key_id": "k2", "key": SPELLINGS[0] + "!"}),
        json.dumps({"key_id": "k2", "key": base64.b64encode(MATERIAL[:20]).decode()}),
        json.dumps({"key_id": "k2", "material": SPELLINGS[0]}),
    ],
)
def test_a_bad_key_file_is_refused_without_showing_its_content(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "k2.key"
    path.touch(mode=0o600)
    path.write_text(content)
    with pytest.raises(KeyRingError) as refused:
        read_key_file(path, "k2")
    assert_no_material(str(refused.value))


# -- no key material anywhere ----------------------------------------------------------------


def test_no_material_in_repr_str_summary_or_errors() -> None:
    ring = KeyRing("k1", {"k1": MATERIAL, "k2": bytes(reversed(MATERIAL))}, 5)
    assert ring.to_json().count(SPELLINGS[0]) == 1  # the file itself does hold it
    for text in (repr(ring), str(ring), json.dumps(ring.summary())):
        assert_no_material(text)
    assert ids_of(ring.summary()) == {"version": 5, "current": "k1", "keys": ["k1", "k2"]}
    assert set(ring.summary()["kcv"]) == {"k1", "k2"}
    failures = [
        lambda: ring.with_key("k1", MATERIAL),
        lambda: ring.with_key("k3", MATERIAL + b"x"),
        lambda: ring.promoted("k9"),
        lambda: ring.without("k1"),
        lambda: KeyRing("k1", {"k1": MATERIAL + b"x"}),
        lambda: KeyRing("k9", {"k1": MATERIAL}),
        lambda: KeyRing.from_json(ring.to_json().replace('"version": 5', '"version": -5')),
        lambda: KeyRing.from_json(ring.to_json().replace('"current": "k1"', '"current": "k9"')),
        lambda: KeyRing.from_json(ring.to_json()[:-3]),
    ]
    for failure in failures:
        with pytest.raises(KeyRingError) as refused:
            failure()
        assert_no_material(str(refused.value))
        assert_no_material(repr(refused.value))


def test_no_material_in_the_reload_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ring.json"
    write_key_ring(KeyRing("k1", {"k1": MATERIAL}, 1), path)
    source = KeyRingSource(path, check_every_s=0)
    caplog.set_level(logging.INFO)
    update_key_ring(path, lambda r: r.with_key("k2", bytes(reversed(MATERIAL))))
    source.get()
    path.write_text(path.read_text().replace('"current": "k1"', '"current": "k9"'))
    os.utime(path, ns=(1, 1))
    assert source.get().version == 2  # refused: the last good ring stays
    assert "version 2, current key k1, keys k1,k2" in caplog.text
    assert "key ring change refused" in caplog.text
    assert_no_material(caplog.text)
