"""The edge assembled from its settings, without Orthanc: EdgeSettings from an Orthanc
configuration, EdgeApp wired from it, and the REST routes over it."""

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgcloud.edge_app import EdgeApp
from imgcloud.edge_routes import EdgeRoutes
from imgcloud.errors import ConfigurationError
from imgcloud.plugin_settings import CentralSettings, EdgeSettings
from imgcloud.routes import NotAllowed, Reply
from imgcloud.storage.archive import EncryptedArchive
from imgcloud.storage.keyring import KeyRing, write_key_ring

from tests.unit.test_worker import started_slow

PACS = {"AET": "HOSP_PACS", "Host": "127.0.0.1", "Port": 11112}
PACS |= {"AllowFind": True, "AllowMove": True, "AllowGet": False}


def edge_configuration(tmp_path: Path, **section: Any) -> dict[str, Any]:
    ring = tmp_path / "ring.json"
    write_key_ring(KeyRing.generate("k1"), ring)
    return {
        "Python": {"AllowThreads": True},
        "OverwriteInstances": True,
        "DicomAet": "EDGE_A",
        **{
            f"DicomAlwaysAllow{op}": False
            for op in ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")
        },
        "DicomCheckModalityHost": True,
        "DicomModalities": {"HOSP_PACS": PACS},
        "OrthancPeers": {"central": {"Url": "http://127.0.0.1:9/", "Username": "u"}},
        "ImagingCloud": {
            "Role": "edge",
            "Institution": "H0001",
            "ForwardPeer": "central",
            "QueueFile": str(tmp_path / "queue.sqlite"),
            "HospitalPacs": "HOSP_PACS",
            "Storage": {
                "Backend": "filesystem",
                "KeyRingFile": str(ring),
                "Filesystem": {"Root": str(tmp_path / "objects")},
            },
        }
        | section,
    }


def test_settings_hold_what_the_edge_reads(tmp_path: Path) -> None:
    settings = EdgeSettings.from_orthanc(edge_configuration(tmp_path))
    assert settings.peer.base_url == "http://127.0.0.1:9"
    assert settings.peer.auth == ("u", "")
    assert (settings.dicom_aet, settings.ca_bundle, settings.indexer) == ("EDGE_A", True, None)
    assert settings.compression.name == "jpeg-ls-lossless"
    assert settings.queue_file == tmp_path / "queue.sqlite"
    assert settings.compression_workers == 0  # one per core


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"Python": {}}, "Python.AllowThreads"),
        ({"OverwriteInstances": False}, "OverwriteInstances"),
        ({"OrthancPeers": {"central": {"Username": "u"}}}, "OrthancPeers.central.Url"),
        ({"LimitFindResults": -1}, "LimitFindResults"),
    ],
)
def test_a_bad_orthanc_setting_is_named(tmp_path: Path, change: dict, setting: str) -> None:
    with pytest.raises(ConfigurationError, match=setting.replace(".", r"\.")):
        EdgeSettings.from_orthanc(edge_configuration(tmp_path) | change)


@pytest.mark.parametrize(
    ("section", "setting"),
    [
        ({"Compression": "zip"}, "ImagingCloud.Compression"),
        ({"Storage": None}, "ImagingCloud.Storage"),
        ({"Indexer": {"ApiUrl": "http://x"}}, "ImagingCloud.Indexer.TokenUrl"),
        (
            {
                "Indexer": {
                    "ApiUrl": "a",
                    "TokenUrl": "t",
                    "ClientId": "c",
                    "ClientSecretFile": "/no",
                }
            },
            "ImagingCloud.Indexer.ClientSecretFile",
        ),
    ],
)
def test_a_bad_imaging_cloud_setting_is_named(tmp_path: Path, section: dict, setting: str) -> None:
    config = edge_configuration(tmp_path)
    config["ImagingCloud"] |= section
    with pytest.raises(ConfigurationError, match=setting.replace(".", r"\.")):
        EdgeSettings.from_orthanc(config)


def test_the_indexer_secret_is_read_once_and_kept_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"ClientSecret": "s3cr3t"}))
    indexer = {"ApiUrl": "a", "TokenUrl": "t", "ClientId": "c", "ClientSecretFile": str(secret)}
    settings = EdgeSettings.from_orthanc(edge_configuration(tmp_path, Indexer=indexer))
    assert settings.indexer is not None
    assert settings.indexer.client_secret.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


def test_central_needs_its_postgresql_index() -> None:
    with pytest.raises(ConfigurationError, match=r"PostgreSQL\.EnableIndex"):
        CentralSettings.from_orthanc({"ImagingCloud": {"Role": "central"}})


@pytest.fixture
def app(tmp_path: Path) -> EdgeApp:
    settings = EdgeSettings.from_orthanc(edge_configuration(tmp_path))
    archive = EncryptedArchive.from_settings(settings.storage)
    no_orthanc = httpx.MockTransport(lambda request: httpx.Response(503))
    return EdgeApp(settings, archive, "encrypted-filesystem", no_orthanc, lambda d, _ts: d)


@pytest.fixture
def routes(app: EdgeApp) -> dict:
    return EdgeRoutes(app, lambda _message: None).routes()


def test_a_c_store_of_an_instance_held_already_is_discarded_with_a_warning(
    app: EdgeApp,
) -> None:
    held = {"1.2.3": "orthanc-id"}
    assert app.cstore_status("1.2.3", held.get) == 0xB000
    assert app.cstore_status("1.2.4", held.get) == 0
    assert app.cstore_status("", lambda _uid: pytest.fail("looked up an empty UID")) == 0


def test_status_and_not_yet_known_studies(routes: dict) -> None:
    status = routes["/imaging-cloud/status"].dispatch("GET")
    assert isinstance(status, Reply) and status.status == 200
    assert status.body["institution"] == "H0001" and status.body["rules_version"] == 0
    forwarding = routes["/imaging-cloud/studies/([0-9a-f-]+)/forwarding"].dispatch("GET", ("ab",))
    assert forwarding == Reply(404, "this study has not been queued for forwarding")
    assert routes["/imaging-cloud/status"].dispatch("POST") == NotAllowed("GET")


def test_a_fetch_is_queued_and_a_bad_one_refused_with_the_reason(routes: dict) -> None:
    fetch = routes["/imaging-cloud/retrievals"]
    job = fetch.dispatch("POST", body=json.dumps({"study_instance_uid": "1.2.3"}))
    assert isinstance(job, Reply) and job.status == 200 and job.body["kind"] == "fetch"
    again = routes["/imaging-cloud/jobs/([0-9a-f-]+)"].dispatch("GET", (job.body["job_id"],))
    assert isinstance(again, Reply) and again.body["job_id"] == job.body["job_id"]
    unknown = fetch.dispatch("POST", body='{"study_instance_uid": "1.2", "deliver_to": "NOWHERE"}')
    assert unknown == Reply(422, {"error": "AE titles not configured on this edge: NOWHERE"})
    assert isinstance(refused := fetch.dispatch("POST", body="{}"), Reply)
    assert refused.status == 422 and "study_instance_uid" in refused.body["error"]


def test_rules_are_replaced_or_refused_naming_the_version_in_force(routes: dict) -> None:
    rules = routes["/imaging-cloud/rules"]
    assert rules.dispatch("PUT", body='{"version": 1, "compression": "keep"}').status == 200
    refused = rules.dispatch("PUT", body='{"version": 1, "compression": "zip"}')
    assert isinstance(refused, Reply) and refused.status == 400
    assert "version 1 stays in force" in refused.body


def test_stop_tells_all_four_workers_first_then_waits_once(
    app: EdgeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc's shutdown waits about one slow worker's wind-down (1 s), not four of them
    one after another (4 s at least)."""
    slow = started_slow(4, wind_down_s=1.0)
    for name, worker in zip(("worker", "retriever", "sender", "audit_sender"), slow, strict=True):
        monkeypatch.setattr(app, name, worker)
    started = time.monotonic()
    assert app.stop()
    assert time.monotonic() - started < 3.0
    assert all(worker.told.is_set() for worker in slow)
