"""/imaging-cloud/status on central and on an edge shows the key ring as the running Orthanc
has loaded it (version, current key, key ids) and never its material."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import imgcloud.central_app
import pytest
from imgcloud.central_app import CentralApp
from imgcloud.edge_app import EdgeApp
from imgcloud.edge_routes import EdgeRoutes
from imgcloud.plugin_settings import CentralSettings, EdgeSettings
from imgcloud.routes import Reply
from imgcloud.storage.archive import EncryptedArchive, KeyRingSource
from imgcloud.storage.keyring import KeyRing, update_key_ring, write_key_ring

from tests.unit.test_edge_app import edge_configuration


class NoRegistry:
    """Stands in for the PostgreSQL registries the status route does not use."""

    def __init__(self, *_args: Any) -> None: ...

    def close(self) -> None: ...


def materials(path: Path) -> list[str]:
    ring = KeyRing.from_file(path, "x")
    return [base64.b64encode(ring.get(k) or b"").decode() for k in ring.key_ids]


def status_of(routes: dict) -> dict[str, Any]:
    reply = routes["/imaging-cloud/status"].dispatch("GET")
    assert isinstance(reply, Reply) and reply.status == 200
    return json.loads(reply.text())


def test_central_status_shows_the_loaded_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imgcloud.central_app, "HashRegistry", NoRegistry)
    monkeypatch.setattr(imgcloud.central_app, "PushRegistry", NoRegistry)
    ring_file = tmp_path / "keyring.json"
    write_key_ring(KeyRing.generate("k1"), ring_file)
    settings = CentralSettings.from_orthanc(
        {
            "PostgreSQL": {"EnableIndex": True, "Host": "127.0.0.1", "Port": 9, "Database": "x"},
            "ImagingCloud": {"Role": "central"},
        }
    )
    source = KeyRingSource(ring_file, check_every_s=0)
    app = CentralApp(settings, "encrypted-s3 (aes-256-gcm)", None, source)  # type: ignore[arg-type]
    status = status_of(app.routes())
    kcv = {"k1": KeyRing.from_file(ring_file, "x").check_value("k1")}
    assert status["key_ring"] == {"version": 1, "current": "k1", "keys": ["k1"], "kcv": kcv}
    update_key_ring(ring_file, lambda r: r.with_key("k2"))
    update_key_ring(ring_file, lambda r: r.promoted("k2"))
    status = status_of(app.routes())
    kcv["k2"] = KeyRing.from_file(ring_file, "x").check_value("k2")
    assert status["key_ring"] == {
        "version": 3,
        "current": "k2",
        "keys": ["k1", "k2"],
        "kcv": kcv,
    }
    assert status["role"] == "central"
    leaked = any(material in json.dumps(status) for material in materials(ring_file))
    assert not leaked, "key material in the status answer"


def test_edge_status_shows_the_loaded_ring(tmp_path: Path) -> None:
    settings = EdgeSettings.from_orthanc(edge_configuration(tmp_path))
    archive = EncryptedArchive.from_settings(settings.storage)
    no_orthanc = httpx.MockTransport(lambda request: httpx.Response(503))
    app = EdgeApp(settings, archive, "encrypted-filesystem", no_orthanc, lambda d, _ts: d)
    status = status_of(EdgeRoutes(app, lambda _m: None, archive.keys).routes())
    ring = KeyRing.from_file(tmp_path / "ring.json", "x")
    assert status["key_ring"] == ring.summary()
    assert list(status["key_ring"]["kcv"]) == ["k1"]
    assert status["institution"] == "H0001"
    leaked = any(m in json.dumps(status) for m in materials(tmp_path / "ring.json"))
    assert not leaked, "key material in the status answer"
