"""An edge refuses REST changes to its DICOM modalities (imgcloud.edge_routes)."""

import pytest
from imgcloud.edge_routes import (
    MODALITY_CHANGE_REFUSED,
    SCRIPT_REFUSED,
    method_name,
    modality_change,
    refusal,
)


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("PUT", "/modalities/EVIL"),
        ("DELETE", "/modalities/HOSP_PACS"),
        ("PUT", "//modalities//EVIL/"),
        ("PUT", "/modalit%69es/EVIL"),
        ("POST", "/modalities"),
        ("POST", "/modalities/EVIL"),
    ],
)
def test_changes_are_refused_however_spelt(method: str, uri: str) -> None:
    assert modality_change(method, uri)


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("GET", "/modalities"),
        ("GET", "/modalities/HOSP_PACS"),
        ("POST", "/modalities/HOSP_PACS/store"),  # using an entry is not changing it
        ("POST", "/modalities/HOSP_PACS/echo"),
        ("PUT", "/peers/central"),
        ("DELETE", "/studies/abc"),
        ("PUT", "/imaging-cloud/rules"),
    ],
)
def test_everything_else_passes(method: str, uri: str) -> None:
    assert not modality_change(method, uri)


def test_orthancs_method_numbers_are_named() -> None:
    assert [method_name(n) for n in (1, 2, 3, 4)] == ["GET", "POST", "PUT", "DELETE"]
    assert method_name("put") == "PUT"


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("POST", "/tools/execute-script"),
        ("POST", "//tools//execute-script/"),
        ("POST", "/tools/execute%2Dscript"),
        ("PUT", "/tools/execute-script"),
    ],
)
def test_lua_scripts_are_refused_however_spelt(method: str, uri: str) -> None:
    """A Lua script's RestApiPut would not pass the edge's HTTP filter (W3)."""
    assert refusal(method, uri) == SCRIPT_REFUSED


def test_a_modality_change_is_refused_for_its_own_reason() -> None:
    assert refusal("PUT", "/modalities/EVIL") == MODALITY_CHANGE_REFUSED
    assert refusal("POST", "/tools/find") is None
    assert refusal("POST", "/tools/execute-script/more") is None
