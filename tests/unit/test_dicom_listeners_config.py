"""ImagingCloud.DicomListeners: which AE titles may use which of an edge's two DICOM
listeners, checked at plugin load against DicomModalities and Orthanc's host check."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from imgcloud.config import PluginConfig
from imgcloud.errors import ConfigurationError

SIDECAR = "127.0.0.2"


def entry(aet: str, host: str, port: int) -> dict[str, Any]:
    return {
        "AET": aet,
        "Host": host,
        "Port": port,
        "AllowFind": True,
        "AllowMove": True,
        "AllowGet": False,
    }


EDGE: dict[str, Any] = {
    "DicomCheckModalityHost": True,
    "DicomModalities": {
        "HOSP_PACS": entry("HOSP_PACS", SIDECAR, 11113),
        "DEMO_CT": entry("DEMO_CT", "127.0.0.1", 104),
    },
    "OrthancPeers": {"central": {"Url": "http://127.0.0.1:1/"}},
    "ImagingCloud": {
        "Role": "edge",
        "Institution": "H0001",
        "ForwardPeer": "central",
        "QueueFile": "/var/lib/imaging-cloud/queue.sqlite",
        "DicomListeners": {"TlsSourceAddress": SIDECAR, "TlsOnlyAETs": ["HOSP_PACS"]},
    },
}


def edge_with(**changes: Any) -> dict[str, Any]:
    """EDGE with top-level settings changed (a value of None removes the setting)."""
    config = copy.deepcopy(EDGE)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def listeners_with(block: Any) -> dict[str, Any]:
    config = copy.deepcopy(EDGE)
    config["ImagingCloud"]["DicomListeners"] = block
    return config


def test_a_tls_only_pacs_and_a_plain_modality_load() -> None:
    listeners = PluginConfig.from_orthanc(EDGE).dicom_listeners
    assert listeners is not None
    assert listeners.tls_source_address == SIDECAR
    assert listeners.tls_only_aets == {"HOSP_PACS"}


def test_an_edge_without_the_block_has_one_plain_listener() -> None:
    config = copy.deepcopy(EDGE)
    del config["ImagingCloud"]["DicomListeners"]
    config["DicomModalities"]["HOSP_PACS"]["Host"] = "10.0.0.8"
    assert PluginConfig.from_orthanc(config).dicom_listeners is None


@pytest.mark.parametrize(
    ("modalities", "message"),
    [
        # the PACS reachable from its own host would also be let in on the plain port
        (
            {"HOSP_PACS": entry("HOSP_PACS", "10.0.0.8", 104)},
            r"DicomModalities\.HOSP_PACS: HOSP_PACS may use the TLS listener only, so its "
            r"Host must be ImagingCloud\.DicomListeners\.TlsSourceAddress \(127\.0\.0\.2\)",
        ),
        # a second entry for the same AE title (Orthanc matches titles case-insensitively)
        (
            {
                "HOSP_PACS": entry("HOSP_PACS", SIDECAR, 11113),
                "pacs-old": entry("hosp_pacs", "10.0.0.8", 104),
            },
            r"DicomModalities\.pacs-old: hosp_pacs may use the TLS listener only",
        ),
        # a plain AE at the sidecar's address could only ever come through TLS: a mistake
        (
            {
                "HOSP_PACS": entry("HOSP_PACS", SIDECAR, 11113),
                "DEMO_CT": entry("DEMO_CT", SIDECAR, 104),
            },
            r"DicomModalities\.DEMO_CT: Host 127\.0\.0\.2 is the TLS sidecar's address, which "
            r"only the AE titles of ImagingCloud\.DicomListeners\.TlsOnlyAETs may use",
        ),
        # short form too
        (
            {"HOSP_PACS": ["HOSP_PACS", "127.0.0.1", 104]},
            r"DicomModalities\.HOSP_PACS",
        ),
        # a TLS-only AE title nobody configured
        (
            {"DEMO_CT": entry("DEMO_CT", "127.0.0.1", 104)},
            r"ImagingCloud\.DicomListeners\.TlsOnlyAETs: not the AET of any DicomModalities "
            r"entry: HOSP_PACS",
        ),
    ],
)
def test_a_modality_entry_at_odds_with_the_listeners_is_named(
    modalities: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(edge_with(DicomModalities=modalities))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DicomCheckModalityHost": False}, r"DicomCheckModalityHost: must be true"),
        ({"DicomCheckModalityHost": None}, r"DicomCheckModalityHost: must be true"),
        ({"DicomAlwaysAllowStore": True}, r"DicomAlwaysAllowStore: must be false"),
        ({"DicomAlwaysAllowEcho": True}, r"DicomAlwaysAllowEcho: must be false"),
        ({"DicomTlsEnabled": True}, r"DicomTlsEnabled: must be false"),
        ({"DicomModalitiesInDatabase": True}, r"DicomModalitiesInDatabase: must be false"),
    ],
)
def test_settings_that_would_bypass_the_host_check_are_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(edge_with(**changes))


def test_strict_ae_comparison_tells_titles_of_another_case_apart() -> None:
    modalities = copy.deepcopy(EDGE["DicomModalities"])
    modalities["other"] = entry("hosp_pacs", "10.0.0.8", 104)
    config = edge_with(DicomModalities=modalities, StrictAetComparison=True)
    assert PluginConfig.from_orthanc(config).dicom_listeners is not None
    with pytest.raises(ConfigurationError, match=r"DicomModalities\.other"):
        PluginConfig.from_orthanc(edge_with(DicomModalities=modalities))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"TlsSourceAddress": "sidecar.local", "TlsOnlyAETs": ["HOSP_PACS"]}, "must be an IP"),
        ({"TlsOnlyAETs": ["HOSP_PACS"]}, r"TlsSourceAddress: Field required"),
        ({"TlsSourceAddress": SIDECAR, "TlsOnlyAETs": ["A" * 17]}, r"TlsOnlyAETs\.0"),
        ({"TlsSourceAddress": SIDECAR, "TlsOnlyAETs": "HOSP_PACS"}, r"TlsOnlyAETs"),
        ({"TlsSourceAddress": SIDECAR, "TlsOnly": ["HOSP_PACS"]}, r"TlsOnly: Extra inputs"),
        ("127.0.0.2", r"ImagingCloud\.DicomListeners: \(block\)"),
    ],
)
def test_a_malformed_block_is_named(block: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"ImagingCloud\.DicomListeners"):
        PluginConfig.from_orthanc(listeners_with(block))
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(listeners_with(block))
