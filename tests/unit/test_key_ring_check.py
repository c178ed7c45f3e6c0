"""`check --key k1` counts the objects each master key seals, from their headers, and fails
while any is sealed under k1 (run it before `retire --key k1`)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from imgcloud.storage.__main__ import main
from imgcloud.storage.archive import EncryptedArchive, KeyRingSource
from imgcloud.storage.backends import FileStore
from imgcloud.storage.envelope import Algorithm
from imgcloud.storage.keyring import KeyRing, update_key_ring, write_key_ring
from imgcloud.storage.maintenance import NOT_SEALED, objects_by_key
from imgcloud.storage.object_keys import object_key


def test_objects_are_counted_per_key_and_check_key_fails_while_one_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), ring)
    store = FileStore(tmp_path / "objects")
    archive = EncryptedArchive(store, KeyRingSource(ring, 0), Algorithm.AES_256_GCM)
    archive.create(str(uuid.uuid4()), 1, b"one")
    update_key_ring(ring, lambda r: r.with_key("k2").promoted("k2"))
    archive.create(str(uuid.uuid4()), 1, b"two")
    archive.create(str(uuid.uuid4()), 1, b"three")
    store.put(object_key("", str(uuid.uuid4()), 1), b"not ours")
    assert objects_by_key(store) == {NOT_SEALED: 1, "k1": 1, "k2": 2}

    config = tmp_path / "orthanc.json"
    storage = {"Backend": "filesystem", "KeyRingFile": str(ring),
               "Filesystem": {"Root": str(tmp_path / "objects")}}  # fmt: skip
    config.write_text(json.dumps({"ImagingCloud": {"Role": "central", "Storage": storage}}))
    monkeypatch.setattr("imgcloud.storage.__main__.orthanc_pg_attachments", lambda _c: [])
    assert main(["check", "--key", "k1", "--orthanc-config", str(config)]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["objects_by_key"]["k1"] == 1
    assert "1 objects are sealed under k1" in out.err
    assert main(["check", "--key", "k9", "--orthanc-config", str(config)]) == 0
