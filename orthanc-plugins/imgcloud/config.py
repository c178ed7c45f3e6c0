"""The `ImagingCloud` section of an Orthanc configuration, validated once at load."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .errors import ConfigurationError
from .routes import describe

_INSTITUTION = re.compile(r"^[A-Z0-9]{2,16}$")
# An AE title as DICOM allows it (PS3.5 AE: ASCII, no backslash, no control characters;
# leading and trailing spaces are padding, so none here)
_AE_TITLE = r"[\x21-\x5b\x5d-\x7e]{1,16}"
# Every DicomAlwaysAllow* of Orthanc 1.12: each skips Orthanc's AE and host check for its
# operation, and Orthanc takes Echo and Store as true when they are missing.
_DICOM_ALWAYS = ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")


def _check_edge_settings(configuration: dict[str, Any]) -> None:
    """Orthanc settings every edge needs, with or without DicomListeners: only the
    DicomModalities entries (checked here) say which AE title may do what from where, and
    nothing changes them at run time."""
    for operation in _DICOM_ALWAYS:
        setting = f"DicomAlwaysAllow{operation}"
        if configuration.get(setting) is not False:
            missing = "missing" if setting not in configuration else "not false"
            raise ConfigurationError(
                f"{setting}: must be false on an edge ({missing}): otherwise Orthanc "
                "accepts that operation from every AE title and address (Echo and Store "
                "are true when missing)"
            )
    if configuration.get("DicomCheckModalityHost") is not True:
        raise ConfigurationError(
            "DicomCheckModalityHost: must be true on an edge: without it Orthanc lets an "
            "AE title in from any address (a TLS-only one on the plain port)"
        )
    if configuration.get("DicomModalitiesInDatabase") is True:
        raise ConfigurationError(
            "DicomModalitiesInDatabase: must be false on an edge: modalities added "
            "through the REST API are not checked here, and a second entry of a TLS-only AE "
            "title with another Host would let it in on the plain port"
        )
    # Lua's RestApiPut/RestApiPost do not pass the edge's HTTP filter
    if configuration.get("ExecuteLuaEnabled") is True:
        raise ConfigurationError(
            "ExecuteLuaEnabled: must be false on an edge: a Lua script's REST calls bypass "
            "the filter that keeps DICOM modalities fixed"
        )
    if configuration.get("LuaScripts"):
        raise ConfigurationError(
            "LuaScripts: must be empty on an edge: a Lua script's REST calls bypass the "
            "filter that keeps DICOM modalities fixed"
        )


def _check_dicom_access(configuration: dict[str, Any]) -> None:
    """An edge's DicomModalities pass every C-FIND and C-MOVE of a known AE to the plugin,
    which is the gate (ImagingCloud.QueryRetrieveAETs) and audits what it answers and what
    it refuses; an entry Orthanc refused itself would be refused unaudited. C-GET: never."""
    for name, entry in (configuration.get("DicomModalities") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigurationError(
                f"DicomModalities.{name}: use the long form with AllowFind/AllowMove/AllowGet "
                "(the short form allows every operation, C-GET included)"
            )
        aet = entry.get("AET", name)
        if not isinstance(aet, str) or not re.fullmatch(_AE_TITLE, aet):
            raise ConfigurationError(
                f"DicomModalities.{name}.AET: not an AE title (1-16 printable ASCII "
                f"characters, no space or backslash): {aet!r}"
            )
        for key in ("AllowFind", "AllowMove"):
            if entry.get(key) is not True:
                raise ConfigurationError(
                    f"DicomModalities.{name}.{key}: must be true on an edge: the plugin "
                    "decides per AE (ImagingCloud.QueryRetrieveAETs) and audits each refusal, "
                    "which Orthanc's own refusal would not"
                )
        if entry.get("AllowGet", True) is not False:
            raise ConfigurationError(
                f"DicomModalities.{name}.AllowGet: must be false (C-GET cannot be audited)"
            )


AeTitle = Annotated[str, StringConstraints(pattern=rf"^{_AE_TITLE}$")]
# Orthanc compares AE titles case-insensitively (unless StrictAetComparison), ASCII only
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# A client certificate's subject as nginx 1.11.6 and later prints it ($ssl_client_s_dn,
# RFC 2253, the most specific RDN first, e.g. "CN=pacs01,OU=Radiology,O=Hospital A"): the
# sidecar compares it as text, so only single-valued RDNs of attribute types OpenSSL and RFC
# 4514 name alike, with plain ASCII values (OpenSSL escapes anything else).
_SUBJECT_VALUE = r"[A-Za-z0-9_.-](?:[A-Za-z0-9 _.-]{0,126}[A-Za-z0-9_.-])?"
_SUBJECT_RDN = rf"(?:CN|OU|O|L|ST|C|DC)={_SUBJECT_VALUE}"
CertificateSubject = Annotated[
    str, StringConstraints(pattern=rf"^{_SUBJECT_RDN}(?:,{_SUBJECT_RDN}){{0,15}}$")
]


class TlsPeer(BaseModel):
    """An AE title let in only over mutual TLS: the subject of its client certificate, and
    the address the sidecar connects to Orthanc's plain port from for that certificate and
    no other. Its DicomModalities entry names that address, so Orthanc's host check lets
    the AE title in only from a connection of that certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    aet: AeTitle = Field(alias="AET")
    certificate_subject: CertificateSubject = Field(alias="CertificateSubject")
    source_address: str = Field(alias="SourceAddress")


class DicomListeners(BaseModel):
    """ImagingCloud.DicomListeners: which AE titles may use which of the edge's two DICOM
    listeners. Orthanc's own port is the plain one; the TLS sidecar passes a mutual-TLS
    association to it only from a client certificate of `TlsPeers`, from that peer's
    `SourceAddress`. The AE titles of `TlsPeers` may come only from there, every other one
    never (docs/edge.md, "Two DICOM listeners")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tls_peers: tuple[TlsPeer, ...] = Field(alias="TlsPeers", default=())

    @model_validator(mode="before")
    @classmethod
    def _not_the_old_form(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and {"TlsSourceAddress", "TlsOnlyAETs"} & raw.keys():
            raise ValueError(
                "TlsSourceAddress and TlsOnlyAETs are replaced by TlsPeers (each TLS-only "
                "AE title with its CertificateSubject and a SourceAddress of its own): "
                "without them any certificate of the CA could claim those AE titles"
            )
        return raw

    @property
    def tls_only_aets(self) -> frozenset[str]:
        """The AE titles let in only over mutual TLS."""
        return frozenset(p.aet for p in self.tls_peers)


def _entry_aet_host(name: str, entry: Any) -> tuple[str, str]:
    if isinstance(entry, dict):
        return str(entry.get("AET", name)), str(entry.get("Host", ""))
    return str(entry[0]), str(entry[1])


_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_PLAIN_LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _check_tls_peers(where: str, peers: tuple[TlsPeer, ...], same: Any) -> None:
    """Each TLS peer an AE title, a certificate subject and an address of its own: two
    peers sharing an address could each claim the other's AE title."""
    seen: dict[str, set[object]] = {
        "AET": set(),
        "CertificateSubject": set(),
        "SourceAddress": set(),
    }
    for peer in peers:
        at = f"{where}.TlsPeers.{peer.aet}"
        try:
            address = ipaddress.ip_address(peer.source_address)
        except ValueError:
            raise ConfigurationError(
                f"{at}.SourceAddress: must be an IP address (Orthanc compares the caller's "
                f"address with DicomModalities' Host as text), not {peer.source_address!r}"
            ) from None
        if address not in _LOOPBACK or address == _PLAIN_LOOPBACK:
            raise ConfigurationError(
                f"{at}.SourceAddress: must be a loopback address of 127.0.0.0/8 other than "
                f"127.0.0.1 (the sidecar's own, for this certificate only; 127.0.0.1 is any "
                f"local process's), not {peer.source_address}"
            )
        for what, value in (
            ("AET", same(peer.aet)),
            ("CertificateSubject", peer.certificate_subject),
            ("SourceAddress", address),
        ):
            if value in seen[what]:
                raise ConfigurationError(
                    f"{at}.{what}: another TLS peer has it too; each needs its own"
                )
            seen[what].add(value)


def _dicom_listeners(configuration: dict[str, Any], raw: Any) -> DicomListeners:
    """Validate the block against DicomModalities and the settings Orthanc's host check
    depends on; raise ConfigurationError naming the setting or the entry at fault."""
    where = "ImagingCloud.DicomListeners"
    try:
        listeners = DicomListeners.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(block)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"{where}: {problems}") from None
    if configuration.get("DicomTlsEnabled") is True:
        raise ConfigurationError(
            f"DicomTlsEnabled: must be false with {where}: Orthanc's port is the plain "
            "listener, the TLS sidecar the TLS one"
        )
    # Orthanc compares AE titles case-insensitively unless StrictAetComparison is set
    strict = configuration.get("StrictAetComparison") is True

    def same(aet: str) -> str:
        return aet if strict else aet.translate(_ASCII_LOWER)

    _check_tls_peers(where, listeners.tls_peers, same)
    address_of = {same(p.aet): p.source_address for p in listeners.tls_peers}
    peer_at = {p.source_address: p.aet for p in listeners.tls_peers}
    seen: set[str] = set()
    for name, entry in (configuration.get("DicomModalities") or {}).items():
        aet, host = _entry_aet_host(name, entry)
        seen.add(same(aet))
        if same(aet) in address_of and host != address_of[same(aet)]:
            raise ConfigurationError(
                f"DicomModalities.{name}: {aet} may use the TLS listener only, so its Host "
                f"must be {where}.TlsPeers.{aet}.SourceAddress ({address_of[same(aet)]}), "
                f"not {host!r}"
            )
        if same(aet) not in address_of and host in peer_at:
            raise ConfigurationError(
                f"DicomModalities.{name}: Host {host} is the TLS sidecar's address for "
                f"{peer_at[host]}'s certificate, which only that AE title may use ({aet} is "
                "not it)"
            )
    unknown = sorted(p.aet for p in listeners.tls_peers if same(p.aet) not in seen)
    if unknown:
        raise ConfigurationError(
            f"{where}.TlsPeers: not the AET of any DicomModalities entry: {', '.join(unknown)}"
        )
    return listeners


def _aet_of(name: str, entry: Any) -> str:
    return _entry_aet_host(name, entry)[0]


def _query_retrieve_aets(
    modalities: dict[str, Any], aets: list[str] | None, hospital_pacs: str | None
) -> frozenset[str]:
    """The AE titles the plugin lets C-FIND and C-MOVE: each must be the AET of a
    DicomModalities entry; by default the hospital PACS's only, else nobody."""
    if aets is None:
        if hospital_pacs is None:
            return frozenset()
        return frozenset({_aet_of(hospital_pacs, modalities[hospital_pacs])})
    unknown = sorted(set(aets) - {_aet_of(n, e) for n, e in modalities.items()})
    if unknown:
        raise ConfigurationError(
            "ImagingCloud.QueryRetrieveAETs: not the AET of any DicomModalities entry: "
            + ", ".join(unknown)
        )
    return frozenset(aets)


class _ImagingCloud(BaseModel):
    """The ImagingCloud section as Orthanc's configuration spells it (types and ranges;
    what depends on the role or on other sections is checked in PluginConfig)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    role: Literal["edge", "central"] = Field(alias="Role")
    institution: str | None = Field(None, alias="Institution")
    forward_peer: str | None = Field(None, alias="ForwardPeer")
    forward_retry_max_s: Annotated[float, Field(gt=0, strict=True)] = Field(
        300, alias="ForwardRetryMaxSeconds"
    )
    queue_file: str | None = Field(None, alias="QueueFile")
    hospital_pacs: str | None = Field(None, alias="HospitalPacs")
    query_retrieve_aets: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, alias="QueryRetrieveAETs"
    )
    dicom_listeners: Any = Field(None, alias="DicomListeners")


class PluginConfig(BaseModel):
    """The ImagingCloud section, validated: PluginConfig.from_orthanc(configuration)."""

    model_config = ConfigDict(frozen=True)
    role: str
    institution: str | None
    forward_peer: str | None
    forward_retry_max_s: float
    queue_file: str | None = None
    hospital_pacs: str | None = None  # the DicomModalities entry pushed studies go to
    query_retrieve_aets: frozenset[str] = frozenset()  # who may C-FIND and C-MOVE (edge)
    dicom_listeners: DicomListeners | None = None  # edge: who may use which listener

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> PluginConfig:
        """Validate the ImagingCloud section; raise ConfigurationError naming the setting."""
        if not isinstance(configuration.get("ImagingCloud"), dict):
            raise ConfigurationError("ImagingCloud: section missing from the configuration")
        try:
            section = _ImagingCloud.model_validate(configuration["ImagingCloud"])
        except ValidationError as exc:
            raise ConfigurationError(describe(exc, "ImagingCloud")) from None
        modalities = configuration.get("DicomModalities") or {}
        if section.role == "edge":
            if not _INSTITUTION.match(section.institution or ""):
                raise ConfigurationError(
                    "ImagingCloud.Institution: an edge needs its institution code "
                    "(2-16 upper-case letters or digits)"
                )
            if section.forward_peer not in (configuration.get("OrthancPeers") or {}):
                raise ConfigurationError(
                    "ImagingCloud.ForwardPeer: must name an entry of OrthancPeers"
                )
            if not section.queue_file:
                raise ConfigurationError(
                    "ImagingCloud.QueueFile: an edge needs a path for its durable forwarding queue"
                )
        if section.hospital_pacs is not None and section.hospital_pacs not in modalities:
            raise ConfigurationError(
                "ImagingCloud.HospitalPacs: must name an entry of DicomModalities"
            )
        query_retrieve: frozenset[str] = frozenset()
        listeners = None
        if section.role == "edge":
            _check_edge_settings(configuration)
            _check_dicom_access(configuration)
            query_retrieve = _query_retrieve_aets(
                modalities, section.query_retrieve_aets, section.hospital_pacs
            )
            if section.dicom_listeners is not None:
                listeners = _dicom_listeners(configuration, section.dicom_listeners)
        return cls(
            role=section.role,
            institution=section.institution,
            forward_peer=section.forward_peer,
            forward_retry_max_s=float(section.forward_retry_max_s),
            queue_file=section.queue_file,
            hospital_pacs=section.hospital_pacs,
            query_retrieve_aets=query_retrieve,
            dicom_listeners=listeners,
        )
