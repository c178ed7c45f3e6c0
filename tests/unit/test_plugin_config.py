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
