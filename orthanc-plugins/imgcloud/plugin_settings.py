"""Each plugin's settings: one pydantic model built once, at load, from the JSON of
`orthanc.GetConfiguration()`. Nothing else in the plugins reads Orthanc's configuration.

    EdgeSettings.from_orthanc(configuration)     # ImagingCloud (edge), storage, peer, ...
    CentralSettings.from_orthanc(configuration)  # ImagingCloud (central), storage, PostgreSQL

Each refusal is a ConfigurationError whose message names the setting at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SkipValidation, ValidationError

from .compression import CompressionPolicy
from .config import PluginConfig
from .errors import ConfigurationError
from .instance_hashes import central_conninfo
from .routes import describe
from .storage.read_ahead import ReadAheadSettings
from .storage.settings import StorageSettings, storage_settings


class _Section(BaseModel):
    """A block of Orthanc's configuration: its keys as Orthanc spells them."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def _validated(model: type[_Section], document: Any, where: str = "") -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(describe(exc, where)) from None


class PeerSettings(_Section):
    """The OrthancPeers entry the edge forwards to (central, or the gateway in front of it)."""

    url: str = Field(alias="Url", min_length=1)
    username: str = Field("", alias="Username")
    password: SecretStr = Field(SecretStr(""), alias="Password")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password.get_secret_value()


class IndexerSettings(_Section):
    """ImagingCloud.Indexer: the hospital gateway's Keycloak service account, and where the
    indexer's API is. The client secret is read from its file at load."""

    api_url: str = Field(alias="ApiUrl", min_length=1)
    token_url: str = Field(alias="TokenUrl", min_length=1)
    client_id: str = Field(alias="ClientId", min_length=1)
    client_secret_file: Path = Field(alias="ClientSecretFile")
    client_secret: SecretStr = SecretStr("")


def _indexer(section: Any) -> IndexerSettings | None:
    if not section:
        return None
    where = "ImagingCloud.Indexer"
    indexer: IndexerSettings = _validated(IndexerSettings, section, where)
    try:
        secret = json.loads(indexer.client_secret_file.read_text())["ClientSecret"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{where}.ClientSecretFile: {type(exc).__name__}: cannot read ClientSecret from "
            f"{indexer.client_secret_file}"
        ) from None
    return indexer.model_copy(update={"client_secret": SecretStr(str(secret))})


class _Python(_Section):
    allow_threads: Any = Field(None, alias="AllowThreads")


class _EdgeSection(_Section):
    compression: str = Field("jpeg-ls-lossless", alias="Compression")
    # encoder processes (imgcloud.compression_pool); 0: one per core this Orthanc may use
    compression_workers: int = Field(0, alias="CompressionWorkers", ge=0, le=64)
    # imgcloud.in_place: the local copy is replaced once no C-STORE came for this long (0: at
    # once, the default: deferring measured no faster C-STORE, docs/edge.md, and its review
    # found races a resend or upload can hit), and up to this much compressed data is kept
    # for forwarding meanwhile
    replace_after_idle_s: float = Field(0.0, alias="ReplaceAfterIdleSeconds", ge=0, le=600)
    keep_compressed_mb: int = Field(256, alias="KeepCompressedMB", ge=0, le=4096)
    # how long an idle connection to central is kept for the next upload
    central_keepalive_s: float = Field(0.5, alias="CentralKeepAliveSeconds", gt=0, le=60)
    indexer: Any = Field(None, alias="Indexer")
    # the fleet (#15, imgcloud.fleet_agent / imgcloud.upgrade): heartbeat interval, the
    # platform's release public key (no key: upgrades are refused), where releases are
    # installed side by side (default: releases/ beside the queue), how long a new release
    # has to prove healthy, and the certificates whose expiry the heartbeat reports
    fleet_heartbeat_s: float = Field(30.0, alias="FleetHeartbeatSeconds", ge=1, le=3600)
    release_public_key: Path | None = Field(None, alias="ReleasePublicKey")
    release_dir: Path | None = Field(None, alias="ReleaseDir")
    upgrade_health_s: float = Field(60.0, alias="UpgradeHealthCheckSeconds", ge=5, le=3600)
    certificate_files: dict[str, Path] = Field(default_factory=dict, alias="CertificateFiles")


class _EdgeOrthanc(_Section):
    """The parts of Orthanc's own configuration the edge plugin uses."""

    python: _Python = Field(_Python.model_validate({}), alias="Python")
    dicom_aet: str = Field("ORTHANC", alias="DicomAet")
    overwrite_instances: bool = Field(False, alias="OverwriteInstances")
    https_ca: str | None = Field(None, alias="HttpsCACertificates")
    dicom_modalities: dict[str, Any] = Field(default_factory=dict, alias="DicomModalities")
    limit_find_results: int | None = Field(None, alias="LimitFindResults", ge=0)
    peers: dict[str, Any] = Field(default_factory=dict, alias="OrthancPeers")
    imaging_cloud: _EdgeSection = Field(alias="ImagingCloud")


class EdgeSettings(BaseModel):
    """Everything the edge plugin reads from Orthanc's configuration."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    plugin: Annotated[PluginConfig, SkipValidation]
    storage: Annotated[StorageSettings, SkipValidation]
    compression: Annotated[CompressionPolicy, SkipValidation]
    compression_workers: int
    replace_after_idle_s: float = 0.0
    keep_compressed_mb: int = 256
    central_keepalive_s: float = 0.5
    fleet_heartbeat_s: float = 30.0
    release_public_key: bytes | None = Field(None, repr=False)  # PEM, read at load
    release_dir: Path | None = None
    upgrade_health_s: float = 60.0
    certificate_files: dict[str, Path] = Field(default_factory=dict)
    peer: PeerSettings
    indexer: IndexerSettings | None
    dicom_aet: str
    ca_bundle: str | bool  # an https peer is verified against the hospital's CA bundle
    dicom_modalities: dict[str, Any]
    limit_find_results: int

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> EdgeSettings:
        """Validate the edge's configuration; ConfigurationError names the setting."""
        plugin = PluginConfig.from_orthanc(configuration)
        orthanc: _EdgeOrthanc = _validated(_EdgeOrthanc, configuration)
        if orthanc.python.allow_threads is not True:
            # Without it a worker thread keeps the GIL inside an SDK call while Orthanc's
            # own threads (a synchronous C-STORE job reading our storage area) wait for it.
            raise ConfigurationError(
                "Python.AllowThreads: must be true (the plugin's worker threads call Orthanc's SDK)"
            )
        if orthanc.overwrite_instances is not True:
            # the compressed copy replaces the one the modality sent (imgcloud.edge_app)
            raise ConfigurationError(
                "OverwriteInstances: must be true (the edge replaces each instance it "
                "compresses with the compressed copy)"
            )
        storage = storage_settings(configuration)
        if storage is None:
            raise ConfigurationError(
                "ImagingCloud.Storage: an edge needs its encrypted storage (its key ring also "
                "seals the patient data it records)"
            )
        peer_name = str(plugin.forward_peer)
        section = orthanc.imaging_cloud
        public_key = None
        if section.release_public_key is not None:
            try:
                public_key = section.release_public_key.read_bytes()
            except OSError as exc:
                raise ConfigurationError(
                    f"ImagingCloud.ReleasePublicKey: cannot read {section.release_public_key}: "
                    f"{type(exc).__name__}"
                ) from None
        return cls(
            plugin=plugin,
            storage=storage,
            compression=CompressionPolicy.from_name(orthanc.imaging_cloud.compression),
            compression_workers=orthanc.imaging_cloud.compression_workers,
            replace_after_idle_s=orthanc.imaging_cloud.replace_after_idle_s,
            keep_compressed_mb=orthanc.imaging_cloud.keep_compressed_mb,
            central_keepalive_s=orthanc.imaging_cloud.central_keepalive_s,
            fleet_heartbeat_s=section.fleet_heartbeat_s,
            release_public_key=public_key,
            release_dir=section.release_dir,
            upgrade_health_s=section.upgrade_health_s,
            certificate_files=section.certificate_files,
            peer=_validated(PeerSettings, orthanc.peers[peer_name], f"OrthancPeers.{peer_name}"),
            indexer=_indexer(orthanc.imaging_cloud.indexer),
            dicom_aet=orthanc.dicom_aet,
            ca_bundle=orthanc.https_ca or True,
            dicom_modalities=orthanc.dicom_modalities,
            limit_find_results=orthanc.limit_find_results or 0,
        )

    @property
    def queue_file(self) -> Path:
        """The durable forwarding queue; the edge's other files sit beside it."""
        return Path(str(self.plugin.queue_file))

    @property
    def data_dir(self) -> Path:
        return self.queue_file.parent

    @property
    def releases(self) -> Path:
        """Where upgrades install releases side by side (imgcloud.upgrade)."""
        return self.release_dir or self.data_dir / "releases"

    def dicom_scp_configuration(self) -> dict[str, Any]:
        """The settings imgcloud.dicom_scp takes, under Orthanc's names."""
        return {
            "DicomModalities": self.dicom_modalities,
            "DicomAet": self.dicom_aet,
            "LimitFindResults": self.limit_find_results,
        }


class _ReadAhead(_Section):
    """ImagingCloud.ReadAhead (storage/read_ahead.py): on by default."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    enabled: bool = Field(True, alias="Enabled", strict=True)
    depth: int = Field(8, alias="Depth", ge=1, le=256)
    workers: int = Field(4, alias="Workers", ge=1, le=32)
    max_bytes: int = Field(64 * 1024 * 1024, alias="MaxBytes", ge=1024 * 1024)
    ttl_s: float = Field(10.0, alias="TtlSeconds", gt=0, le=300)
    wait_s: float = Field(10.0, alias="WaitSeconds", gt=0, le=120)
    listing_ttl_s: float = Field(30.0, alias="ListingTtlSeconds", gt=0, le=600)


def _read_ahead(configuration: dict[str, Any]) -> ReadAheadSettings:
    section = configuration["ImagingCloud"].get("ReadAhead") or {}
    valid: _ReadAhead = _validated(_ReadAhead, section, "ImagingCloud.ReadAhead")
    root = str((configuration.get("DicomWeb") or {}).get("Root") or "/dicom-web/")
    return ReadAheadSettings(**valid.model_dump(), dicomweb_root=root)


class CentralSettings(BaseModel):
    """Everything the central plugin reads from Orthanc's configuration."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    plugin: Annotated[PluginConfig, SkipValidation]
    storage: Annotated[StorageSettings | None, SkipValidation]
    conninfo: dict[str, Any] = Field(repr=False)  # central's own tables, its PostgreSQL index
    # ImagingCloud.ReadAhead: series read-ahead of the archive's ciphertext (on by default)
    read_ahead: Annotated[ReadAheadSettings, SkipValidation] = ReadAheadSettings()

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> CentralSettings:
        """Validate central's configuration; ConfigurationError names the setting."""
        plugin = PluginConfig.from_orthanc(configuration)
        return cls(
            plugin=plugin,
            storage=storage_settings(configuration),
            conninfo=central_conninfo(configuration),
            read_ahead=_read_ahead(configuration),
        )
