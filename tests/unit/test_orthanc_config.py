import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from imgcloud.config import PluginConfig

from deploy.stack.services.gateway import render_template
from deploy.stack.services.orthanc import (
    DEMO_MODALITY_AET,
    HOSPITAL_PACS_AET,
    EdgeA,
    EdgeB,
    deep_merge,
)

ROOT = Path(__file__).resolve().parents[2]


def test_deep_merge_keeps_static_settings_and_lets_runtime_win() -> None:
    static: dict[str, Any] = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 60}
    merged = deep_merge(static, {"DicomWeb": {"Root": "/dw/"}, "StableAge": 3})
    assert merged == {"DicomWeb": {"Enable": True, "Root": "/dw/"}, "StableAge": 3}
    assert static["DicomWeb"]["Root"] == "/dicom-web/"  # the input is not modified


def test_static_orthanc_configs_hold_no_secrets_or_ports() -> None:
    for path in ("central-orthanc/orthanc.json", "edge-orthanc/orthanc.json"):
        config = json.loads((ROOT / path).read_text())
        assert "RegisteredUsers" not in config
        assert "Password" not in json.dumps(config)
        assert config["AuthenticationEnabled"] is True
        assert config["ImagingCloud"]["Role"] in ("edge", "central")


def test_edge_refuses_unknown_callers_by_default() -> None:
    edge = json.loads((ROOT / "edge-orthanc/orthanc.json").read_text())
    assert edge["DicomAlwaysAllowStore"] is False
    assert edge["DicomCheckModalityHost"] is True


def test_gateway_template_fills_placeholders_and_keeps_nginx_variables() -> None:
    out = render_template("listen ${GATEWAY_LISTEN}; set $x $host;", {"GATEWAY_LISTEN": "1"})
    assert out == "listen 1; set $x $host;"


def test_gateway_template_names_a_missing_value() -> None:
    text = (ROOT / "deploy/gateway/nginx.conf.template").read_text()
    try:
        render_template(text, {})
    except ValueError as exc:
        assert "GATEWAY_LISTEN" in str(exc)
    else:
        raise AssertionError("a template with unfilled placeholders was accepted")


def test_edge_allows_no_operation_to_every_caller() -> None:
    """#18, 4: only the DicomModalities entries say who may do what."""
    edge = json.loads((ROOT / "edge-orthanc/orthanc.json").read_text())
    for operation in ("Echo", "Store", "Find", "FindWorklist", "Get", "Move"):
        assert edge[f"DicomAlwaysAllow{operation}"] is False, operation


def test_stack_modalities_pass_queries_to_the_plugin_which_lets_only_the_pacs(
    tmp_path: Path,
) -> None:
    """Every entry passes C-FIND and C-MOVE to the plugin (so that a refusal is audited),
    C-GET to nobody; the plugin lets only the hospital PACS query and retrieve. The edge
    plugin's own check accepts the result."""
    ports = {"hospital_pacs_a": 11112, "edge_a_pacs_tls": 11113}
    edge = EdgeA(SimpleNamespace(ports=ports))  # type: ignore[arg-type]
    modalities = edge.local_modalities()
    allowed = {
        name: {op for op in ("Echo", "Store", "Find", "Move", "Get") if entry[f"Allow{op}"]}
        for name, entry in modalities.items()
    }
    assert allowed == {
        DEMO_MODALITY_AET: {"Echo", "Store", "Find", "Move"},
        HOSPITAL_PACS_AET: {"Echo", "Store", "Find", "Move"},
    }
    static = json.loads((ROOT / "edge-orthanc/orthanc.json").read_text())
    config = static | {"DicomModalities": modalities, "OrthancPeers": {"central": {}}}
    config["ImagingCloud"] = static["ImagingCloud"] | {
        "Institution": "H0001",
        "QueueFile": str(tmp_path / "queue.sqlite"),
        "HospitalPacs": HOSPITAL_PACS_AET,
        "QueryRetrieveAETs": [HOSPITAL_PACS_AET],
        "DicomListeners": edge.dicom_listeners(),
    }
    loaded = PluginConfig.from_orthanc(config)
    assert loaded.query_retrieve_aets == {HOSPITAL_PACS_AET}
    assert loaded.dicom_listeners is not None
    assert loaded.dicom_listeners.tls_only_aets == {HOSPITAL_PACS_AET}


def test_each_edge_reaches_its_pacs_only_through_its_tls_sidecar() -> None:
    """The PACS's entry is the sidecar's address and outbound port; the modality keeps its
    own host; the two edges' sidecars have addresses of their own."""
    addresses = set()
    for cls, low in ((EdgeA, "a"), (EdgeB, "b")):
        ports = {f"hospital_pacs_{low}": 11112, f"edge_{low}_pacs_tls": 11113}
        edge = cls(SimpleNamespace(ports=ports))  # type: ignore[arg-type]
        modalities = edge.local_modalities()
        pacs, modality = modalities[HOSPITAL_PACS_AET], modalities[DEMO_MODALITY_AET]
        assert (pacs["Host"], pacs["Port"]) == (edge.tls_source_address, 11113)
        assert (modality["Host"], modality["Port"]) == ("127.0.0.1", 104)
        assert edge.tls_source_address.startswith("127.") and edge.tls_source_address != (
            "127.0.0.1"
        )
        addresses.add(edge.tls_source_address)
    assert len(addresses) == 2


def test_python_plugin_releases_the_gil_during_sdk_calls() -> None:
    """The edge's worker threads call the SDK (imgcloud.local_api); central's HTTP threads
    too (verification): both need Python.AllowThreads (off by default in plugin 5.0)."""
    for path in ("central-orthanc/orthanc.json", "edge-orthanc/orthanc.json"):
        config = json.loads((ROOT / path).read_text())
        assert config["Python"]["AllowThreads"] is True, path
