"""A key ring that root rewrites (a key added, promoted, retired) keeps its owner, the
Orthanc's service uid: Orthanc re-reads the file as that uid and would refuse one it cannot
open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from imgcloud.storage.keyring import KeyRing, write_key_ring

SERVICE = 10042


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_rotated_ring_keeps_its_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    os.chown(path, SERVICE, SERVICE)
    write_key_ring(KeyRing.from_file(path, "KeyRingFile").with_key("k2").promoted("k2"), path)
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (SERVICE, SERVICE, 0o600)
    assert KeyRing.from_file(path, "KeyRingFile").current_id == "k2"


def test_a_new_ring_belongs_to_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), path)
    assert path.stat().st_uid == os.geteuid()
