"""The `ImagingCloud.Storage` section of an Orthanc configuration, validated at load.

    "Storage": {
      "Backend": "s3",                       // or "filesystem"
      "KeyRingFile": "/etc/imaging-cloud/keyring.json",
      "Algorithm": "aes-256-gcm",            // or "sm4-gcm" (GB/T 39786)
      "KeyPrefix": "",
      "S3": {"Endpoint": "https://s3.example", "Region": "us-east-1", "Bucket": "archive",
             "CredentialsFile": "/etc/imaging-cloud/s3.json",   // or the environment
             "PathStyle": true, "PoolSize": 32, "ConnectTimeout": 3, "ReadTimeout": 30,
             "MaxAttempts": 4},
      "Filesystem": {"Root": "/var/lib/imaging-cloud/objects"}
    }

S3 credentials come from CredentialsFile ({"AccessKey": ..., "SecretKey": ...}) or from
IMGCLOUD_S3_ACCESS_KEY / IMGCLOUD_S3_SECRET_KEY, never from the configuration itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .backends import S3Settings
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


def _number(section: dict[str, Any], name: str, default: float, where: str) -> float:
    value = section.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{where}.{name}: must be a positive number")
    return float(value)


def _s3_credentials(section: dict[str, Any], where: str) -> tuple[str, str]:
    path = section.get("CredentialsFile")
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
    backend = section.get("Backend")
    if backend not in ("s3", "filesystem"):
        raise ConfigurationError(f"{SECTION}.Backend: must be 's3' or 'filesystem'")
    ring = section.get("KeyRingFile")
    if not isinstance(ring, str) or not ring:
        raise ConfigurationError(f"{SECTION}.KeyRingFile: the master key ring file is required")
    try:
        algorithm = Algorithm.from_name(str(section.get("Algorithm", "aes-256-gcm")))
    except ValueError as exc:
        raise ConfigurationError(f"{SECTION}.Algorithm: {exc}") from None
    prefix = section.get("KeyPrefix", "")
    if not isinstance(prefix, str) or prefix.startswith("/"):
        raise ConfigurationError(f"{SECTION}.KeyPrefix: a string not starting with '/'")
    s3 = None
    root = None
    if backend == "s3":
        where = f"{SECTION}.S3"
        s3_section = section.get("S3")
        if not isinstance(s3_section, dict):
            raise ConfigurationError(f"{where}: required when Backend is 's3'")
        bucket = s3_section.get("Bucket")
        if not isinstance(bucket, str) or not bucket:
            raise ConfigurationError(f"{where}.Bucket: required")
        access, secret = _s3_credentials(s3_section, where)
        s3 = S3Settings(
            endpoint=s3_section.get("Endpoint") or None,
            region=str(s3_section.get("Region", "us-east-1")),
            bucket=bucket,
            access_key=access,
            secret_key=secret,
            path_style=bool(s3_section.get("PathStyle", True)),
            pool_size=int(_number(s3_section, "PoolSize", 32, where)),
            connect_timeout_s=_number(s3_section, "ConnectTimeout", 3, where),
            read_timeout_s=_number(s3_section, "ReadTimeout", 30, where),
            max_attempts=int(_number(s3_section, "MaxAttempts", 4, where)),
        )
    else:
        fs = section.get("Filesystem") or {}
        if not isinstance(fs, dict) or not fs.get("Root"):
            raise ConfigurationError(
                f"{SECTION}.Filesystem.Root: required when Backend is 'filesystem'"
            )
        root = Path(fs["Root"])
    return StorageSettings(backend, Path(ring), algorithm, prefix, s3, root)
