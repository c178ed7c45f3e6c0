from typing import Any

import pytest
from imgcloud.config import PluginConfig
from imgcloud.errors import ConfigurationError

EDGE: dict[str, Any] = {
    "ImagingCloud": {
        "Role": "edge",
        "Institution": "H0001",
        "ForwardPeer": "central",
        "QueueFile": "/var/lib/imaging-cloud/queue.sqlite",
    },
    "OrthancPeers": {"central": {"Url": "http://127.0.0.1:1/"}},
}


def test_valid_edge_configuration() -> None:
    config = PluginConfig.from_orthanc(EDGE)
    assert (config.role, config.institution, config.forward_peer) == ("edge", "H0001", "central")


def test_central_needs_no_institution() -> None:
    assert PluginConfig.from_orthanc({"ImagingCloud": {"Role": "central"}}).role == "central"


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"Role": "hub"}, "ImagingCloud.Role"),
        ({"Institution": "h 1"}, "ImagingCloud.Institution"),
        ({"ForwardPeer": "elsewhere"}, "ImagingCloud.ForwardPeer"),
        ({"ForwardRetryMaxSeconds": 0}, "ImagingCloud.ForwardRetryMaxSeconds"),
        ({"QueueFile": ""}, "ImagingCloud.QueueFile"),
    ],
)
def test_invalid_settings_are_named(change: dict, setting: str) -> None:
    config = {**EDGE, "ImagingCloud": {**EDGE["ImagingCloud"], **change}}
    with pytest.raises(ConfigurationError, match=setting.replace(".", r"\.")):
        PluginConfig.from_orthanc(config)


def test_missing_section_is_named() -> None:
    with pytest.raises(ConfigurationError, match="ImagingCloud: section missing"):
        PluginConfig.from_orthanc({})


PACS = {"AET": "HOSP_PACS", "Host": "127.0.0.1", "Port": 11112, "AllowFind": True}
PACS |= {"AllowMove": True, "AllowGet": False}


def pacs_without(key: str) -> dict:
    return {"DicomModalities": {"pacs": {k: v for k, v in PACS.items() if k != key}}}


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        (
            {"DicomModalities": {"ct": ["CT1", "127.0.0.1", 104]}},
            "DicomModalities.ct: use the long",
        ),
        ({"DicomModalities": {"pacs": PACS | {"AllowGet": True}}}, "pacs.AllowGet"),
        ({"DicomModalities": {"pacs": {k: v for k, v in PACS.items() if k != "AllowGet"}}}, "Get"),
        (
            {"DicomModalities": {"pacs": {k: v for k, v in PACS.items() if k != "AllowFind"}}},
            "Find",
        ),
        ({"DicomAlwaysAllowFind": True}, "DicomAlwaysAllowFind"),
        ({"DicomAlwaysAllowGet": True}, "DicomAlwaysAllowGet"),
    ],
)
def test_an_edge_refuses_dicom_access_it_cannot_audit(change: dict, setting: str) -> None:
    """#18, 4: the short form allows every operation to the AE; C-GET cannot be observed."""
    with pytest.raises(ConfigurationError, match=setting):
        PluginConfig.from_orthanc(EDGE | change)


def test_an_edge_with_per_ae_permissions_loads() -> None:
    config = EDGE | {"DicomModalities": {"pacs": PACS}, "DicomAlwaysAllowEcho": True}
    assert PluginConfig.from_orthanc(config).role == "edge"
