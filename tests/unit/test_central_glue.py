"""central_plugin.py loaded against a stand-in `orthanc` module and a stand-in CentralApp
(no PostgreSQL): it registers its callbacks, and Orthanc's stop closes the app's pools."""

import runpy
import sys
import types
from pathlib import Path
from typing import Any

import imgcloud.central_app
import pytest

from tests.unit.test_edge_glue import fake_orthanc

PLUGIN = Path(__file__).resolve().parents[2] / "orthanc-plugins/central_plugin.py"
CONFIGURATION = {
    "PostgreSQL": {"EnableIndex": True, "Host": "127.0.0.1", "Port": 9, "Database": "x"},
    "ImagingCloud": {"Role": "central"},
}


class ChangeType:
    NEW_INSTANCE, STABLE_STUDY, ORTHANC_STARTED, ORTHANC_STOPPED = range(4)


class FakeCentralApp:
    def __init__(self, *args: Any) -> None:
        self.closed = 0

    def routes(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    registered: dict[str, Any] = {}
    module: types.ModuleType = fake_orthanc(CONFIGURATION, registered)
    module.ChangeType = ChangeType  # type: ignore[attr-defined]
    module.RegisterOnStoredInstanceCallback = lambda *args: registered.setdefault(  # type: ignore[attr-defined]
        "RegisterOnStoredInstanceCallback", []
    ).append(args)
    monkeypatch.setitem(sys.modules, "orthanc", module)
    monkeypatch.delitem(sys.modules, "glue_common", raising=False)
    monkeypatch.setattr(imgcloud.central_app, "CentralApp", FakeCentralApp)
    return registered | {"globals": runpy.run_path(str(PLUGIN))}


def test_orthancs_stop_closes_the_app_and_nothing_else_does(loaded: dict[str, Any]) -> None:
    ((on_change,),) = loaded["RegisterOnChangeCallback"]
    app = loaded["globals"]["APP"]
    assert isinstance(app, FakeCentralApp)
    on_change(ChangeType.NEW_INSTANCE, 0, "some-instance")
    on_change(ChangeType.ORTHANC_STARTED, 0, "")
    assert app.closed == 0
    on_change(ChangeType.ORTHANC_STOPPED, 0, "")
    assert app.closed == 1
    assert len(loaded["RegisterOnStoredInstanceCallback"]) == 1
    assert any("central plugin" in m for m in loaded["LogWarning"])
