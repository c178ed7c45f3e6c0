"""An edge refuses REST changes to its DICOM modalities (imgcloud.edge_routes)."""

import pytest
from imgcloud.edge_routes import method_name, modality_change


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
