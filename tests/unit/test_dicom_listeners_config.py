"""ImagingCloud.DicomListeners: which AE titles may use which of an edge's two DICOM
listeners, and which client certificate may claim each TLS-only AE title (its own source
address), checked at plugin load against DicomModalities and Orthanc's host check."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from imgcloud.config import PluginConfig
from imgcloud.errors import ConfigurationError

SIDECAR = "127.0.0.2"
PACS_SUBJECT = "CN=HOSP_PACS"


def peer(aet: str, address: str, subject: str) -> dict[str, str]:
    return {"AET": aet, "SourceAddress": address, "CertificateSubject": subject}


PACS_PEER = peer("HOSP_PACS", SIDECAR, PACS_SUBJECT)


def entry(aet: str, host: str, port: int) -> dict[str, Any]:
    return {
        "AET": aet,
        "Host": host,
        "Port": port,
        "AllowFind": True,
        "AllowMove": True,
        "AllowGet": False,
    }


# every DicomAlwaysAllow* of Orthanc 1.12 (Echo and Store are true when missing)
ALWAYS_ALLOW = ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")

EDGE: dict[str, Any] = {
    **{f"DicomAlwaysAllow{operation}": False for operation in ALWAYS_ALLOW},
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
        "DicomListeners": {"TlsPeers": [PACS_PEER]},
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
    assert listeners.tls_only_aets == {"HOSP_PACS"}
    (pacs,) = listeners.tls_peers
    assert (pacs.aet, pacs.source_address, pacs.certificate_subject) == (
        "HOSP_PACS",
        SIDECAR,
        PACS_SUBJECT,
    )


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
            r"Host must be ImagingCloud\.DicomListeners\.TlsPeers\.HOSP_PACS\.SourceAddress "
            r"\(127\.0\.0\.2\)",
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
            r"DicomModalities\.DEMO_CT: Host 127\.0\.0\.2 is the TLS sidecar's address for "
            r"HOSP_PACS's certificate, which only that AE title may use",
        ),
        # short form too
        (
            {"HOSP_PACS": ["HOSP_PACS", "127.0.0.1", 104]},
            r"DicomModalities\.HOSP_PACS",
        ),
        # a TLS-only AE title nobody configured
        (
            {"DEMO_CT": entry("DEMO_CT", "127.0.0.1", 104)},
            r"ImagingCloud\.DicomListeners\.TlsPeers: not the AET of any DicomModalities "
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
        ({"DicomModalitiesInDatabase": True}, r"DicomModalitiesInDatabase: must be false"),
        # Orthanc takes a missing DicomAlwaysAllowEcho/Store as true, and then never runs
        # the host check: the PACS's AE title could C-STORE on the plain port
        *(
            ({f"DicomAlwaysAllow{op}": None}, rf"DicomAlwaysAllow{op}: must be false .*missing")
            for op in ALWAYS_ALLOW
        ),
        *(
            ({f"DicomAlwaysAllow{op}": True}, rf"DicomAlwaysAllow{op}: must be false")
            for op in ALWAYS_ALLOW
        ),
        ({"DicomAlwaysAllowStore": "false"}, r"DicomAlwaysAllowStore: must be false"),
        # a Lua script's RestApiPut would not pass the filter keeping modalities fixed
        ({"ExecuteLuaEnabled": True}, r"ExecuteLuaEnabled: must be false"),
        ({"LuaScripts": ["/etc/orthanc/x.lua"]}, r"LuaScripts: must be empty"),
    ],
)
@pytest.mark.parametrize("with_listeners", [True, False])
def test_settings_that_would_bypass_the_host_check_are_refused(
    changes: dict[str, Any], message: str, with_listeners: bool
) -> None:
    """On every edge, not only one with DicomListeners (N1)."""
    config = edge_with(**changes)
    if not with_listeners:
        del config["ImagingCloud"]["DicomListeners"]
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(config)


def test_orthancs_own_tls_is_refused_beside_the_sidecar() -> None:
    with pytest.raises(ConfigurationError, match=r"DicomTlsEnabled: must be false"):
        PluginConfig.from_orthanc(edge_with(DicomTlsEnabled=True))


def test_lua_off_and_no_scripts_load() -> None:
    config = edge_with(ExecuteLuaEnabled=False, LuaScripts=[])
    assert PluginConfig.from_orthanc(config).dicom_listeners is not None


@pytest.mark.parametrize("address", ["127.0.0.2", "127.0.0.3", "127.255.255.254"])
def test_a_loopback_source_address_of_its_own_loads(address: str) -> None:
    """The stack's sidecars use 127.0.0.2 (edge A) and 127.0.0.3 (edge B)."""
    config = listeners_with({"TlsPeers": [peer("HOSP_PACS", address, PACS_SUBJECT)]})
    config["DicomModalities"]["HOSP_PACS"]["Host"] = address
    assert PluginConfig.from_orthanc(config).dicom_listeners is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.0.0.8", "169.254.0.2", "::1", "::ffff:127.0.0.2"]
)
def test_a_source_address_any_local_process_or_another_host_has_is_refused(
    address: str,
) -> None:
    config = listeners_with({"TlsPeers": [peer("HOSP_PACS", address, PACS_SUBJECT)]})
    config["DicomModalities"]["HOSP_PACS"]["Host"] = address
    with pytest.raises(
        ConfigurationError,
        match=r"TlsPeers\.HOSP_PACS\.SourceAddress: must be a loopback address of 127",
    ):
        PluginConfig.from_orthanc(config)


@pytest.mark.parametrize(
    "aet",
    [
        "\u212aHOSP_PACS",  # KELVIN SIGN: str.lower() makes it "k"
        "HOSP_PACS\n",
        "DEMO CT",
        "DEMO\\CT",
        "",
        "A" * 17,
        "ＤEMO_CT",
        42,
    ],
)
def test_every_modality_entrys_ae_title_is_ascii(aet: object) -> None:
    config = copy.deepcopy(EDGE)
    config["DicomModalities"]["DEMO_CT"]["AET"] = aet
    with pytest.raises(ConfigurationError, match=r"DicomModalities\.DEMO_CT\.AET: not an AE title"):
        PluginConfig.from_orthanc(config)


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
        ({"TlsPeers": [peer("HOSP_PACS", "sidecar.local", PACS_SUBJECT)]}, "must be an IP"),
        ({"TlsPeers": [{"AET": "HOSP_PACS", "SourceAddress": SIDECAR}]}, r"Field required"),
        ({"TlsPeers": [peer("A" * 17, SIDECAR, PACS_SUBJECT)]}, r"TlsPeers\.0\.AET"),
        ({"TlsPeers": PACS_PEER}, r"TlsPeers"),
        ({"TlsPeers": [PACS_PEER], "TlsOnly": ["HOSP_PACS"]}, r"TlsOnly: Extra inputs"),
        ({"TlsPeers": [PACS_PEER | {"Fingerprint": "ab"}]}, r"Fingerprint: Extra inputs"),
        ("127.0.0.2", r"ImagingCloud\.DicomListeners: \(block\)"),
        # the form before certificates were bound to AE titles: any certificate of the CA
        # could claim them
        (
            {"TlsSourceAddress": SIDECAR, "TlsOnlyAETs": ["HOSP_PACS"]},
            r"TlsSourceAddress and TlsOnlyAETs are replaced by TlsPeers",
        ),
    ],
)
def test_a_malformed_block_is_named(block: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"ImagingCloud\.DicomListeners"):
        PluginConfig.from_orthanc(listeners_with(block))
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(listeners_with(block))


@pytest.mark.parametrize(
    "subject",
    [
        "CN=HOSP_PACS",
        "CN=pacs01.hospital-a.local,OU=Radiology,O=Hospital A,C=CN",
        "CN=pacs,DC=hospital-a,DC=local",
    ],
)
def test_a_certificate_subject_as_nginx_prints_it_loads(subject: str) -> None:
    config = listeners_with({"TlsPeers": [peer("HOSP_PACS", SIDECAR, subject)]})
    listeners = PluginConfig.from_orthanc(config).dicom_listeners
    assert listeners is not None
    assert listeners.tls_peers[0].certificate_subject == subject


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "/CN=HOSP_PACS",  # nginx's legacy format ($ssl_client_s_dn_legacy)
        "CN = HOSP_PACS",
        "cn=HOSP_PACS",  # OpenSSL prints CN: the text would never match
        "CN=HOSP_PACS, O=Hospital A",
        "CN=HOSP_PACS+OU=Radiology",  # a multi-valued RDN
        "CN=HOSP\\,PACS",  # an escaped comma
        'CN=HOSP"PACS',
        "CN=HOSP_PACS;",
        "CN=HOSP_PACS$",
        "CN=HOSP_PACS}",
        "CN=医院",  # OpenSSL prints \XX escapes for non-ASCII values
        "CN= HOSP_PACS",
        "CN=HOSP_PACS ",
        "serialNumber=42",  # OpenSSL's name, RFC 4514's is an OID
        "CN=" + "A" * 129,
    ],
)
def test_a_subject_the_sidecar_could_not_match_as_text_is_refused(subject: str) -> None:
    config = listeners_with({"TlsPeers": [peer("HOSP_PACS", SIDECAR, subject)]})
    with pytest.raises(ConfigurationError, match=r"TlsPeers\.0\.CertificateSubject"):
        PluginConfig.from_orthanc(config)


def two_tls_peers(vna: dict[str, str], vna_host: str = "127.0.0.4") -> dict[str, Any]:
    """EDGE with a second TLS-only AE title (a VNA) beside the PACS."""
    config = copy.deepcopy(EDGE)
    config["DicomModalities"]["HOSP_VNA"] = entry("HOSP_VNA", vna_host, 11114)
    config["ImagingCloud"]["DicomListeners"] = {"TlsPeers": [PACS_PEER, vna]}
    return config


def test_each_tls_peer_has_an_address_of_its_own() -> None:
    """Two TLS-only AE titles, each bound to its certificate by its own source address."""
    vna = peer("HOSP_VNA", "127.0.0.4", "CN=HOSP_VNA")
    listeners = PluginConfig.from_orthanc(two_tls_peers(vna)).dicom_listeners
    assert listeners is not None
    assert listeners.tls_only_aets == {"HOSP_PACS", "HOSP_VNA"}


@pytest.mark.parametrize(
    ("vna", "vna_host", "message"),
    [
        # sharing the PACS's address, the VNA's certificate could claim the PACS's AE title
        (
            peer("HOSP_VNA", SIDECAR, "CN=HOSP_VNA"),
            SIDECAR,
            r"TlsPeers\.HOSP_VNA\.SourceAddress: another TLS peer has it too",
        ),
        (
            peer("HOSP_VNA", "127.0.0.4", PACS_SUBJECT),
            "127.0.0.4",
            r"TlsPeers\.HOSP_VNA\.CertificateSubject: another TLS peer has it too",
        ),
        (
            peer("hosp_pacs", "127.0.0.4", "CN=HOSP_VNA"),
            "127.0.0.4",
            r"TlsPeers\.hosp_pacs\.AET: another TLS peer has it too",
        ),
        # the VNA's entry at the PACS's address: the PACS's certificate could claim it
        (
            peer("HOSP_VNA", "127.0.0.4", "CN=HOSP_VNA"),
            SIDECAR,
            r"DicomModalities\.HOSP_VNA: HOSP_VNA may use the TLS listener only, so its Host "
            r"must be ImagingCloud\.DicomListeners\.TlsPeers\.HOSP_VNA\.SourceAddress",
        ),
    ],
)
def test_tls_peers_that_could_claim_each_others_ae_title_are_refused(
    vna: dict[str, str], vna_host: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PluginConfig.from_orthanc(two_tls_peers(vna, vna_host))
