"""The `ImagingCloud` section of an Orthanc configuration, validated once at load."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

_INSTITUTION = re.compile(r"^[A-Z0-9]{2,16}$")
# Operations an edge never grants to every caller: the plugin decides C-FIND and C-MOVE per
# calling AE and audits each decision, and cannot observe C-GET at all (Orthanc 1.10.1 has
# no hook for it).
_NEVER_ALWAYS = ("DicomAlwaysAllowFind", "DicomAlwaysAllowMove", "DicomAlwaysAllowGet")


def _check_dicom_access(configuration: dict[str, Any]) -> None:
    """An edge's DicomModalities pass every C-FIND and C-MOVE of a known AE to the plugin,
    which is the gate (ImagingCloud.QueryRetrieveAETs) and audits what it answers and what
    it refuses; an entry Orthanc refused itself would be refused unaudited. C-GET: never."""
    for setting in _NEVER_ALWAYS:
        if configuration.get(setting) is True:
            raise ConfigurationError(f"{setting}: must be false on an edge")
    for name, entry in (configuration.get("DicomModalities") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigurationError(
                f"DicomModalities.{name}: use the long form with AllowFind/AllowMove/AllowGet "
                "(the short form allows every operation, C-GET included)"
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


def _query_retrieve_aets(
    configuration: dict[str, Any], section: dict[str, Any], hospital_pacs: str | None
) -> frozenset[str]:
    """The AE titles the plugin lets C-FIND and C-MOVE: each must be the AET of a
    DicomModalities entry; by default the hospital PACS's only, else nobody."""
    modalities = configuration.get("DicomModalities") or {}
    known = {
        str(entry.get("AET", name)) if isinstance(entry, dict) else str(entry[0])
        for name, entry in modalities.items()
    }
    aets = section.get("QueryRetrieveAETs")
    if aets is None:
        if hospital_pacs is None:
            return frozenset()
        entry = modalities[hospital_pacs]
        return frozenset(
            {str(entry.get("AET", hospital_pacs)) if isinstance(entry, dict) else str(entry[0])}
        )
    if not isinstance(aets, list) or not all(isinstance(a, str) and a for a in aets):
        raise ConfigurationError("ImagingCloud.QueryRetrieveAETs: must be a list of AE titles")
    unknown = sorted(set(aets) - known)
    if unknown:
        raise ConfigurationError(
            "ImagingCloud.QueryRetrieveAETs: not the AET of any DicomModalities entry: "
            + ", ".join(unknown)
        )
    return frozenset(aets)


@dataclass(frozen=True)
class PluginConfig:
    role: str
    institution: str | None
    forward_peer: str | None
    forward_retry_max_s: float
    queue_file: str | None = None
    hospital_pacs: str | None = None  # the DicomModalities entry pushed studies go to
    query_retrieve_aets: frozenset[str] = frozenset()  # who may C-FIND and C-MOVE (edge)

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> PluginConfig:
        """Validate the ImagingCloud section; raise ConfigurationError naming the setting."""
        section = configuration.get("ImagingCloud")
        if not isinstance(section, dict):
            raise ConfigurationError("ImagingCloud: section missing from the configuration")
        role = section.get("Role")
        if role not in ("edge", "central"):
            raise ConfigurationError("ImagingCloud.Role: must be 'edge' or 'central'")
        institution = section.get("Institution")
        peer = section.get("ForwardPeer")
        if role == "edge":
            if not isinstance(institution, str) or not _INSTITUTION.match(institution):
                raise ConfigurationError(
                    "ImagingCloud.Institution: an edge needs its institution code "
                    "(2-16 upper-case letters or digits)"
                )
            peers = configuration.get("OrthancPeers") or {}
            if not isinstance(peer, str) or peer not in peers:
                raise ConfigurationError(
                    "ImagingCloud.ForwardPeer: must name an entry of OrthancPeers"
                )
        queue_file = section.get("QueueFile")
        if role == "edge" and (not isinstance(queue_file, str) or not queue_file):
            raise ConfigurationError(
                "ImagingCloud.QueueFile: an edge needs a path for its durable forwarding queue"
            )
        hospital_pacs = section.get("HospitalPacs")
        if hospital_pacs is not None and hospital_pacs not in (
            configuration.get("DicomModalities") or {}
        ):
            raise ConfigurationError(
                "ImagingCloud.HospitalPacs: must name an entry of DicomModalities"
            )
        query_retrieve: frozenset[str] = frozenset()
        if role == "edge":
            _check_dicom_access(configuration)
            query_retrieve = _query_retrieve_aets(configuration, section, hospital_pacs)
        retry = section.get("ForwardRetryMaxSeconds", 300)
        if not isinstance(retry, int | float) or retry <= 0:
            raise ConfigurationError("ImagingCloud.ForwardRetryMaxSeconds: must be > 0")
        return cls(
            role=role,
            institution=institution,
            forward_peer=peer,
            forward_retry_max_s=float(retry),
            queue_file=queue_file,
            hospital_pacs=hospital_pacs,
            query_retrieve_aets=query_retrieve,
        )
