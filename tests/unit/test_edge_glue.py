"""edge_plugin.py loaded against a stand-in `orthanc` module: it registers its callbacks
and translates them (routes, the HTTP filter), nothing more."""

import json
import runpy
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_edge_app import edge_configuration

PLUGIN = Path(__file__).resolve().parents[2] / "orthanc-plugins/edge_plugin.py"


class Output:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def AnswerBuffer(self, body: str, mime: str) -> None:
        self.sent.append((200, body, mime))

    def SendHttpStatus(self, status: int, body: str) -> None:
        self.sent.append((status, body))

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.sent.append((405, allowed))


def fake_orthanc(configuration: dict, registered: dict) -> types.ModuleType:
    module = types.ModuleType("orthanc")
    module.GetConfiguration = lambda: json.dumps(configuration)  # type: ignore[attr-defined]
    for name in ("LogInfo", "LogWarning", "LogError"):
        setattr(
            module, name, lambda message, name=name: registered.setdefault(name, []).append(message)
        )

    def register(kind: str):  # type: ignore[no-untyped-def]
        return lambda *args: registered.setdefault(kind, []).append(args)

    for kind in (
        "RegisterStorageArea",
        "RegisterRestCallback",
        "RegisterReceivedInstanceCallback",
        "RegisterIncomingCStoreInstanceFilter",
        "RegisterFindCallback",
        "RegisterMoveCallback",
        "RegisterOnChangeCallback",
        "RegisterIncomingHttpRequestFilter",
    ):
        setattr(module, kind, register(kind))
    module.OrthancException = type("OrthancException", (Exception,), {})  # type: ignore[attr-defined]
    return module


@pytest.fixture
def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    registered: dict = {}
    monkeypatch.setitem(
        sys.modules, "orthanc", fake_orthanc(edge_configuration(tmp_path), registered)
    )
    monkeypatch.delitem(sys.modules, "glue_common", raising=False)
    runpy.run_path(str(PLUGIN))
    return registered


def test_the_plugin_registers_its_callbacks(loaded: dict) -> None:
    paths = {args[0] for args in loaded["RegisterRestCallback"]}
    assert "/imaging-cloud/status" in paths and "/imaging-cloud/pushes" in paths
    for kind in (
        "RegisterStorageArea",
        "RegisterOnChangeCallback",
        "RegisterMoveCallback",
        "RegisterIncomingCStoreInstanceFilter",  # only the plugin overwrites an instance
    ):
        assert len(loaded[kind]) == 1
    assert "RegisterReceivedInstanceCallback" not in loaded  # nothing of ours in the C-STORE
    assert any("edge plugin" in m and "loaded for H0001" in m for m in loaded["LogWarning"])


def test_a_route_answers_through_orthancs_output(loaded: dict) -> None:
    callbacks = dict(loaded["RegisterRestCallback"])
    status, refused = Output(), Output()
    callbacks["/imaging-cloud/status"](status, "/imaging-cloud/status", method="GET")
    callbacks["/imaging-cloud/status"](refused, "/imaging-cloud/status", method="PUT")
    assert status.sent[0][0] == 200 and json.loads(status.sent[0][1])["role"] == "edge"
    assert refused.sent == [(405, "GET")]


def test_the_http_filter_refuses_modality_changes_and_logs_them(loaded: dict) -> None:
    (http_filter,) = loaded["RegisterIncomingHttpRequestFilter"][0]
    assert http_filter("/modalities/SECOND_PACS", method=3, ip="127.0.0.1") is False
    assert http_filter("/modalities/HOSP_PACS", method=1, ip="127.0.0.1") is True
    assert http_filter("/modalities/HOSP_PACS/store", method=2, ip="127.0.0.1") is True
    assert any("refused PUT '/modalities/SECOND_PACS'" in m for m in loaded["LogWarning"])
    # Lua's REST calls would not pass this filter
    assert http_filter("//tools/execute-script", method=2, ip="127.0.0.1") is False
    # the decoded URI is logged escaped: no forged log line
    assert http_filter("/modalities/X\nimaging-cloud: ok", method=3, ip="127.0.0.1") is False
    assert not any("\n" in m for m in loaded["LogWarning"])
