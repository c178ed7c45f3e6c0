from typing import Any

import pytest
from imgcloud.config import PluginConfig
from imgcloud.errors import ConfigurationError

EDGE: dict[str, Any] = {
    **{
        f"DicomAlwaysAllow{op}": False
        for op in ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")
    },
    "DicomCheckModalityHost": True,
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
        ({"DicomModalities": {"pacs": PACS | {"AllowFind": False}}}, "pacs.AllowFind"),
        ({"DicomModalities": {"pacs": PACS | {"AllowMove": False}}}, "pacs.AllowMove"),
        ({"DicomAlwaysAllowFind": True}, "DicomAlwaysAllowFind"),
        ({"DicomAlwaysAllowMove": True}, "DicomAlwaysAllowMove"),
        ({"DicomAlwaysAllowGet": True}, "DicomAlwaysAllowGet"),
    ],
)
def test_an_edge_refuses_dicom_access_it_cannot_audit(change: dict, setting: str) -> None:
    """#18, 4: the short form allows every operation to the AE; C-GET cannot be observed."""
    with pytest.raises(ConfigurationError, match=setting):
        PluginConfig.from_orthanc(EDGE | change)


def test_an_edge_with_per_ae_permissions_loads() -> None:
    config = EDGE | {"DicomModalities": {"pacs": PACS}}
    assert PluginConfig.from_orthanc(config).role == "edge"


def with_gate(aets: object, **section: object) -> dict:
    config = EDGE | {"DicomModalities": {"pacs": PACS, "ct": PACS | {"AET": "CT1"}}}
    gate = {} if aets is None else {"QueryRetrieveAETs": aets}
    config["ImagingCloud"] = EDGE["ImagingCloud"] | gate | section
    return config


def test_the_gate_names_known_ae_titles_and_defaults_to_the_hospital_pacs() -> None:
    """#18, 4: the plugin decides who may C-FIND and C-MOVE; the PACS only by default."""
    assert PluginConfig.from_orthanc(with_gate(["HOSP_PACS"])).query_retrieve_aets == {"HOSP_PACS"}
    assert PluginConfig.from_orthanc(with_gate(None, HospitalPacs="pacs")).query_retrieve_aets == {
        "HOSP_PACS"
    }
    assert PluginConfig.from_orthanc(with_gate(None)).query_retrieve_aets == frozenset()


@pytest.mark.parametrize("aets", [["NOBODY"], "HOSP_PACS", [""], [1]])
def test_a_gate_that_names_no_entry_is_refused(aets: object) -> None:
    with pytest.raises(ConfigurationError, match=r"ImagingCloud\.QueryRetrieveAETs"):
        PluginConfig.from_orthanc(with_gate(aets))
