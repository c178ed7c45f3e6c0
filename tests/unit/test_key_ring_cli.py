"""`python -m imgcloud.storage add-key | promote | retire` on a node's key ring, read from
its Orthanc configuration as the serving Orthanc reads it; `rotate` is gone with a message
naming the two phases; no key material in anything the commands print."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from imgcloud.storage.__main__ import main
from imgcloud.storage.keyring import KeyRing, write_key_ring


def node(tmp_path: Path, name: str) -> Path:
    """An Orthanc configuration whose storage section names a fresh ring (k1, version 1)."""
    home = tmp_path / name
    home.mkdir()
    write_key_ring(KeyRing.generate("k1"), home / "keyring.json")
    config = home / "orthanc.json"
    storage = {
        "Backend": "filesystem",
        "KeyRingFile": str(home / "keyring.json"),
        "Filesystem": {"Root": str(home / "objects")},
    }
    config.write_text(json.dumps({"ImagingCloud": {"Role": "central", "Storage": storage}}))
    return config


def ring_of(config: Path) -> KeyRing:
    return KeyRing.from_file(config.parent / "keyring.json", "KeyRingFile")


def run(config: Path, *args: str) -> int:
    return main([*args, "--orthanc-config", str(config)])


def no_material(out: str, *rings: KeyRing) -> None:
    for ring in rings:
        for key_id in ring.key_ids:
            material = ring.get(key_id)
            assert material is not None
            leaked = base64.b64encode(material).decode() in out or material.hex() in out
            assert not leaked, f"key {key_id}'s material is in the output"


def test_add_key_then_promote_on_one_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node(tmp_path, "edge")
    assert run(config, "add-key", "--new-key", "k2", "--single-node") == 0
    added = ring_of(config)
    assert (added.version, added.current_id, added.key_ids) == (2, "k1", ("k1", "k2"))
    out = capsys.readouterr()
    assert "new objects still use k1" in out.out
    assert "exists on this node only (--single-node)" in out.out
    assert f"(kcv {added.check_value('k2')})" in out.out
    assert run(config, "promote", "--key", "k2") == 0
    assert (ring_of(config).version, ring_of(config).current_id) == (3, "k2")
    assert run(config, "promote", "--key", "k2") == 0  # again: nothing changes
    assert ring_of(config).version == 3
    out = capsys.readouterr()
    assert "current already; nothing changed" in out.out
    no_material(out.out + out.err, ring_of(config))


def test_a_key_file_gives_every_node_the_same_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = node(tmp_path, "central"), node(tmp_path, "central-2")
    key_file = tmp_path / "k2.key"
    assert run(first, "add-key", "--new-key", "k2", "--key-file", str(key_file)) == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert run(second, "add-key", "--new-key", "k2", "--key-file", str(key_file)) == 0
    a, b = ring_of(first), ring_of(second)
    assert b.check_value("k2") is not None
    assert a.holds("k2", b.get("k2") or b""), "the nodes hold different k2"
    assert not a.holds("k1", b.get("k1") or b""), "same k1"  # the rest stays each node's
    # a second run with the same file changes nothing (a resumed rotation)
    assert run(second, "add-key", "--new-key", "k2", "--key-file", str(key_file)) == 0
    assert ring_of(second).version == 2
    out = capsys.readouterr()
    assert "written to" in out.out and "in the ring already; nothing changed" in out.out
    assert f"k2 (kcv {b.check_value('k2')})" in out.out  # the operator compares it per node
    assert "this node only" not in out.out + out.err
    assert f"shred {key_file}" in out.err
    no_material(out.out + out.err, ring_of(first), ring_of(second))


def test_clear_errors_for_a_key_present_unknown_or_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node(tmp_path, "central")
    assert run(config, "add-key", "--new-key", "k2", "--single-node") == 0
    capsys.readouterr()
    assert run(config, "add-key", "--new-key", "k2", "--single-node") == 1
    assert "key 'k2' is in the ring already" in capsys.readouterr().err
    # a key file with other material than the ring's k2: refused, and no file is made
    assert run(config, "add-key", "--new-key", "k2", "--key-file", str(tmp_path / "k2")) == 1
    assert "in the ring already" in capsys.readouterr().err
    assert not (tmp_path / "k2").exists()
    other = tmp_path / "other.key"
    assert run(node(tmp_path, "b"), "add-key", "--new-key", "k2", "--key-file", str(other)) == 0
    capsys.readouterr()
    assert run(config, "add-key", "--new-key", "k2", "--key-file", str(other)) == 1
    assert "other key material than this key file's" in capsys.readouterr().err
    assert run(config, "add-key", "--new-key", "k3", "--key-file", str(other)) == 1
    assert "holds another key than 'k3'" in capsys.readouterr().err
    assert run(config, "promote", "--key", "k9") == 1
    assert "key 'k9' is not in the ring; add it on every node first" in capsys.readouterr().err
    assert run(config, "retire", "--key", "k1") == 1
    assert "current key cannot be retired" in capsys.readouterr().err
    assert run(config, "retire", "--key", "k9") == 1
    assert "'k9' is not in the ring" in capsys.readouterr().err
    assert ring_of(config).version == 2  # none of the refusals changed the ring


def test_add_key_without_a_key_file_is_refused_unless_single_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run on each of two nodes, it would give each its own random k2 under one id."""
    config = node(tmp_path, "central")
    assert run(config, "add-key", "--new-key", "k2") == 1
    err = capsys.readouterr().err
    assert "--key-file" in err and "--single-node" in err and "own random key" in err
    assert ring_of(config).key_ids == ("k1",)


def test_retire_removes_an_old_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = node(tmp_path, "central")
    assert run(config, "add-key", "--new-key", "k2", "--single-node") == 0
    assert run(config, "promote", "--key", "k2") == 0
    checkpoint = config.parent / "keyring.rewrap-checkpoint"
    checkpoint.write_text("{}")  # a rewrap under way (or one that failed)
    assert run(config, "retire", "--key", "k1") == 1
    assert "rewrap checkpoint exists" in capsys.readouterr().err
    assert ring_of(config).key_ids == ("k1", "k2")
    checkpoint.unlink()
    assert run(config, "retire", "--key", "k1") == 0
    ring = ring_of(config)
    assert (ring.version, ring.key_ids) == (4, ("k2",))
    assert "retire: key k1 removed (ring version 4)" in capsys.readouterr().out


def test_rotate_is_gone_with_a_pointer_to_the_two_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node(tmp_path, "central")
    with pytest.raises(SystemExit) as stopped:
        run(config, "rotate", "--new-key", "k2")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "'rotate' is gone" in err and "add-key" in err and "promote" in err
    assert ring_of(config).key_ids == ("k1",)
