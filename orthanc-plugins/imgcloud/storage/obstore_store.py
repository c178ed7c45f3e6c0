"""S3 through obstore, the Python binding of Rust's object_store (`"Client": "obstore"`).

Why: inside central Orthanc every storage-area call holds Python's GIL except around
blocking I/O, and botocore does its request building, signing and response parsing in
Python, under the GIL (see docs/archive.md). obstore does the same work in Rust with the
GIL released, so other Orthanc threads run meanwhile.

Only the hot path (put, get, delete) goes through obstore. Listing keeps boto3's S3Store:
object_store lists by path segments ("ab" lists "ab/..." only), while the maintenance
commands need S3's plain string prefixes and StartAfter, and speed does not matter there.

Payload signing: over plain HTTP every PUT body's SHA-256 is part of the SigV4 signature
(as botocore does), since nothing else protects it on the link; over HTTPS, TLS does, and
the signature says UNSIGNED-PAYLOAD, as botocore does over HTTPS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import (
    BaseError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store as _ObstoreS3

from ..errors import ObjectNotFound, StorageUnavailable
from .backends import S3Settings, S3Store, StoredObject

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

# Bounded exponential backoff with jitter between attempts (0.1 s, then doubling, at most
# 2 s); retry_timeout also stops retrying once the attempts could have taken their time.
_INIT_BACKOFF = dt.timedelta(milliseconds=100)
_MAX_BACKOFF = dt.timedelta(seconds=2)


def client_options(settings: S3Settings) -> ClientConfig:
    timeout = dt.timedelta(seconds=settings.read_timeout_s)
    return {
        "allow_http": (settings.endpoint or "").startswith("http://"),
        # Stated, so that no AWS_* variable in the environment can turn them off.
        "allow_invalid_certificates": False,
        "connect_timeout": dt.timedelta(seconds=settings.connect_timeout_s),
        "read_timeout": timeout,  # one read of the response stalls no longer than this
        "timeout": timeout + dt.timedelta(seconds=settings.connect_timeout_s),  # whole request
        "pool_max_idle_per_host": str(settings.pool_size),
        "http1_only": True,
    }


def retry_config(settings: S3Settings) -> RetryConfig:
    per_attempt = settings.connect_timeout_s + settings.read_timeout_s
    return {
        "max_retries": max(settings.max_attempts - 1, 0),
        "backoff": {"init_backoff": _INIT_BACKOFF, "max_backoff": _MAX_BACKOFF, "base": 2},
        "retry_timeout": dt.timedelta(seconds=per_attempt * settings.max_attempts),
    }


class ObstoreS3Store:
    """Objects in an S3 bucket through obstore; listing through boto3 (see the module)."""

    def __init__(
        self,
        settings: S3Settings,
        unsigned_payload: bool | None = None,
        _bench_only: bool = False,
    ) -> None:
        """`unsigned_payload` None: UNSIGNED-PAYLOAD over HTTPS only; forcing it over plain
        HTTP is refused unless `_bench_only` (bench.s3_clients measures what it saves)."""
        self.settings = settings
        self.bucket = settings.bucket
        https = (settings.endpoint or "https://").startswith("https://")
        if unsigned_payload and not https and not _bench_only:
            raise ValueError(
                "unsigned payload over plain HTTP: anyone on the link could replace a body"
            )
        if unsigned_payload is not None:
            https = unsigned_payload
        self._store = _ObstoreS3(
            settings.bucket,
            endpoint=settings.endpoint,
            region=settings.region,
            access_key_id=settings.access_key,
            secret_access_key=settings.secret_key,
            virtual_hosted_style_request=not settings.path_style,
            unsigned_payload=https,  # TLS protects the body; else its hash is signed
            skip_signature=False,  # stated: AWS_SKIP_SIGNATURE would send requests unsigned
            client_options=client_options(settings),
            retry_config=retry_config(settings),
        )
        self._lister: S3Store | None = None

    def __repr__(self) -> str:  # the inner store's repr is obstore's: keep it out of logs
        return f"ObstoreS3Store({self.settings!r})"

    def _fail(self, action: str, key: str, exc: Exception) -> Exception:
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFound(f"object {key}: not found in bucket {self.bucket}")
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
            return StorageUnavailable(f"S3 {action} {key}: access refused")
        # Never the message: it may hold the request's URL and the server's reply.
        return StorageUnavailable(f"S3 {action} {key}: {type(exc).__name__}")

    def put(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self._store, key, data, use_multipart=False)
        except (BaseError, OSError, ValueError) as exc:
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (BaseError, OSError, ValueError) as exc:
            raise self._fail("get", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except FileNotFoundError:
            return  # S3 deletes are idempotent; so is boto3's S3Store.delete
        except (BaseError, OSError, ValueError) as exc:
            raise self._fail("delete", key, exc) from exc

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        if self._lister is None:
            self._lister = S3Store(self.settings)
        return self._lister.list(prefix, start_after)
