"""The `ImagingCloud.Storage` section of an Orthanc configuration, validated at load.

    "Storage": {
      "Backend": "s3",                       // or "filesystem"
      "KeyRingFile": "/etc/imaging-cloud/keyring.json",
      "Algorithm": "aes-256-gcm",            // or "sm4-gcm" (GB/T 39786)
      "KeyPrefix": "",
      "S3": {"Endpoint": "https://s3.example", "Region": "us-east-1", "Bucket": "archive",
             "CredentialsFile": "/etc/imaging-cloud/s3.json",   // or the environment
             "PathStyle": true, "PoolSize": 32, "ConnectTimeout": 3, "ReadTimeout": 30,
             "MaxAttempts": 4, "Client": "boto3"},   // or "obstore" (storage/backends.py)
      "Filesystem": {"Root": "/var/lib/imaging-cloud/objects"},
      "SmallAttachments": "postgresql"       // or "object-store"
    }

SmallAttachments says where the small "DICOM until pixel data" attachments (content type
3) go: "postgresql" keeps them, sealed as in the bucket, in a table of the PostgreSQL that
Orthanc's index uses (shared by every central node; storage/small_objects.py), so each
instance costs one object-store write; "object-store" puts them in the bucket beside the
DICOM file. The default is "postgresql" when Backend is "s3" and Orthanc's index is in
PostgreSQL (central), else "object-store" (edges).

S3 credentials come from CredentialsFile ({"AccessKey": ..., "SecretKey": ...}) or from
IMGCLOUD_S3_ACCESS_KEY / IMGCLOUD_S3_SECRET_KEY, never from the configuration itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigurationError
from ..routes import describe
from .backends import DEFAULT_S3_CLIENT, S3Client, S3Settings
from .envelope import Algorithm

SECTION = "ImagingCloud.Storage"


@dataclass(frozen=True)
class StorageSettings:
    backend: str
    key_ring_file: Path
    algorithm: Algorithm
    key_prefix: str
    s3: S3Settings | None
    filesystem_root: Path | None
    small_attachments: str = "object-store"  # or "postgresql"
    # connection settings of central's PostgreSQL wherever the table can be (S3 and a
    # PostgreSQL index): "object-store" then only sends new small attachments to the
    # bucket; reads, deletions and maintenance still see the rows other nodes wrote
    small_conninfo: dict[str, Any] | None = field(default=None, repr=False)


Positive = Annotated[float, Field(gt=0, strict=True)]


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _S3(_Block):
    bucket: str = Field(alias="Bucket", min_length=1)
    endpoint: str | None = Field(None, alias="Endpoint")
    region: str = Field("us-east-1", alias="Region")
    credentials_file: str | None = Field(None, alias="CredentialsFile")
    path_style: bool = Field(True, alias="PathStyle")
    pool_size: Positive = Field(32, alias="PoolSize")
    connect_timeout: Positive = Field(3, alias="ConnectTimeout")
    read_timeout: Positive = Field(30, alias="ReadTimeout")
    max_attempts: Positive = Field(4, alias="MaxAttempts")
    client: S3Client = Field(DEFAULT_S3_CLIENT, alias="Client")


class _Filesystem(_Block):
    root: str = Field(alias="Root", min_length=1)


class _Storage(_Block):
    backend: Literal["s3", "filesystem"] = Field(alias="Backend")
    key_ring_file: str = Field(alias="KeyRingFile", min_length=1)
    algorithm: str = Field("aes-256-gcm", alias="Algorithm")
    key_prefix: str = Field("", alias="KeyPrefix")
    s3: _S3 | None = Field(None, alias="S3")
    filesystem: _Filesystem | None = Field(None, alias="Filesystem")
    small_attachments: Literal["postgresql", "object-store"] | None = Field(
        None, alias="SmallAttachments"
    )

    @field_validator("key_prefix")
    @classmethod
    def _relative(cls, prefix: str) -> str:
        if prefix.startswith("/"):
            raise ValueError("a string not starting with '/'")
        return prefix


def _s3_credentials(s3: _S3, where: str) -> tuple[str, str]:
    path = s3.credentials_file
    if path:
        try:
            doc = json.loads(Path(path).read_text())
            return str(doc["AccessKey"]), str(doc["SecretKey"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigurationError(
                f"{where}.CredentialsFile: cannot read AccessKey/SecretKey from {path}"
            ) from None
    access = os.environ.get("IMGCLOUD_S3_ACCESS_KEY")
    secret = os.environ.get("IMGCLOUD_S3_SECRET_KEY")
    if not access or not secret:
        raise ConfigurationError(
            f"{where}.CredentialsFile: not set, and IMGCLOUD_S3_ACCESS_KEY / "
            "IMGCLOUD_S3_SECRET_KEY are not in the environment"
        )
    return access, secret


def storage_settings(configuration: dict[str, Any]) -> StorageSettings | None:
    """The storage settings, or None if the section is absent (Orthanc's own storage)."""
    section = (configuration.get("ImagingCloud") or {}).get("Storage")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigurationError(f"{SECTION}: must be an object")
    try:
        storage = _Storage.model_validate(section)
    except ValidationError as exc:
        raise ConfigurationError(describe(exc, SECTION)) from None
    try:
        algorithm = Algorithm.from_name(storage.algorithm)
    except ValueError as exc:
        raise ConfigurationError(f"{SECTION}.Algorithm: {exc}") from None
    s3 = None
    root = None
    if storage.backend == "s3":
        where = f"{SECTION}.S3"
        if storage.s3 is None:
            raise ConfigurationError(f"{where}: required when Backend is 's3'")
        access, secret = _s3_credentials(storage.s3, where)
        s3 = S3Settings(
            endpoint=storage.s3.endpoint or None,
            region=storage.s3.region,
            bucket=storage.s3.bucket,
            access_key=access,
            secret_key=secret,
            path_style=storage.s3.path_style,
            pool_size=int(storage.s3.pool_size),
            connect_timeout_s=storage.s3.connect_timeout,
            read_timeout_s=storage.s3.read_timeout,
            max_attempts=int(storage.s3.max_attempts),
            client=storage.s3.client,
        )
    else:
        if storage.filesystem is None:
            raise ConfigurationError(
                f"{SECTION}.Filesystem.Root: required when Backend is 'filesystem'"
            )
        root = Path(storage.filesystem.root)
    small, conninfo = _small_attachments(configuration, storage)
    return StorageSettings(
        storage.backend,
        Path(storage.key_ring_file),
        algorithm,
        storage.key_prefix,
        s3,
        root,
        small,
        conninfo,
    )


def _small_attachments(
    configuration: dict[str, Any], storage: _Storage
) -> tuple[str, dict[str, Any] | None]:
    """Where small attachments go, and central's PostgreSQL connection if there."""
    from ..instance_hashes import central_conninfo  # psycopg: not needed on an edge

    indexed = bool((configuration.get("PostgreSQL") or {}).get("EnableIndex"))
    choice = storage.small_attachments
    if choice is None:
        choice = "postgresql" if storage.backend == "s3" and indexed else "object-store"
    if choice == "object-store":
        # the table is shared by every central node: a node writing to the bucket still
        # reads and removes rows, and its rewrap/check/census cover them
        shared = storage.backend == "s3" and indexed
        return choice, central_conninfo(configuration) if shared else None
    if not indexed:
        raise ConfigurationError(
            f"{SECTION}.SmallAttachments: 'postgresql' needs Orthanc's index in PostgreSQL "
            "(PostgreSQL.EnableIndex), whose database holds them"
        )
    return choice, central_conninfo(configuration)
