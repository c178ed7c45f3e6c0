"""Where sealed objects live: S3 (any implementation) or a local directory.

Both translate their failures once, here, into the plugin's exception tree.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ObjectNotFound, StorageUnavailable


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: dt.datetime


class ObjectStore(Protocol):
    """The operations the archive needs from a backend."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]: ...


S3Client = Literal["boto3", "obstore"]  # obstore: obstore_store.py


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None
    region: str
    bucket: str
    access_key: str
    secret_key: str
    path_style: bool = True
    pool_size: int = 32
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 4  # attempts in all, bounded exponential backoff between them
    client: S3Client = "boto3"  # the configuration's default is DEFAULT_S3_CLIENT

    def __repr__(self) -> str:  # never print credentials
        return (
            f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"client={self.client!r})"
        )


_MISSING = ("NoSuchKey", "404", "NotFound")


class S3Store:
    """Objects in an S3 bucket through boto3 (SeaweedFS, Ceph RGW, AWS, OSS, OBS, MinIO)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            config=Config(
                s3={"addressing_style": "path" if settings.path_style else "virtual"},
                connect_timeout=settings.connect_timeout_s,
                read_timeout=settings.read_timeout_s,
                retries={"mode": "standard", "max_attempts": settings.max_attempts},
                max_pool_connections=settings.pool_size,
                tcp_keepalive=True,
                # Our envelope authenticates every object (AES-GCM/SM4-GCM tag) and TLS
                # protects the link: botocore's extra CRC32 costs CPU (under Orthanc's
                # GIL) and several S3 implementations reject it. Only where S3 requires it.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _fail(self, action: str, key: str, exc: Exception) -> Exception:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return ObjectNotFound(f"object {key}: not found in bucket {self.bucket}")
            return StorageUnavailable(f"S3 {action} {key}: {code or 'error'}")
        return StorageUnavailable(f"S3 {action} {key}: {type(exc).__name__}")

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("get", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, StartAfter=start_after
            ):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], int(item["Size"]), item["LastModified"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix or "/", exc) from exc


S3_CLIENTS: tuple[str, ...] = get_args(S3Client)
# What "Client" in the storage S3 section means when absent: obstore, by measurement
# (bench/s3_clients.py: less of central's CPU per instance, and the GIL free meanwhile).
DEFAULT_S3_CLIENT: S3Client = "obstore"


def s3_store(settings: S3Settings) -> ObjectStore:
    """The S3 backend that `settings.client` names."""
    if settings.client == "obstore":
        from .obstore_store import ObstoreS3Store  # it imports this module

        return ObstoreS3Store(settings)
    if settings.client == "boto3":
        return S3Store(settings)
    raise ValueError(f"S3 client {settings.client!r}: not one of {', '.join(S3_CLIENTS)}")


class FileStore:
    """Objects as files under a root directory (the encrypted store of a hospital edge)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError("object key escapes the storage root")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)  # readers never see a half-written object
        except OSError as exc:
            raise StorageUnavailable(f"file put {key}: {exc.strerror}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key}: not found under {self.root}") from None
        except OSError as exc:
            raise StorageUnavailable(f"file get {key}: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"file delete {key}: {exc.strerror}") from exc

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(".tmp"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix) and key > start_after:
                    keys.append((key, full))
        for key, full in sorted(keys):
            stat = full.stat()
            yield StoredObject(key, stat.st_size, dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC))
