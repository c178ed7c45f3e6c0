"""The storage area Orthanc calls: every attachment sealed and kept as one object."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..errors import IntegrityError, KeyRingError
from .backends import FileStore, ObjectStore, s3_store
from .envelope import Algorithm, open_sealed, seal
from .keyring import KeyRing
from .object_keys import object_key
from .settings import SECTION, StorageSettings

log = logging.getLogger(__name__)


class KeyRingSource:
    """The key ring file, re-read when it changes: rotation needs no Orthanc restart.

    A changed file that does not validate is refused (logged) and the last good ring stays.
    `summary()` is the ring as this process holds it, for the status route: a rotation
    across nodes waits for every node to show the new key there before it makes it current.
    """

    def __init__(self, path: Path, check_every_s: float = 2.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._ring = KeyRing.from_file(path, f"{SECTION}.KeyRingFile")
        self._seen = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        # the inode too: write_key_ring replaces the file, and two changes may share an mtime
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_ino, info.st_size)

    def get(self, force: bool = False) -> KeyRing:
        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return self._ring
        with self._lock:
            self._checked = now
            seen = self._stat()
            if seen != self._seen:
                try:
                    self._ring = KeyRing.from_file(self.path, f"{SECTION}.KeyRingFile")
                    log.warning(
                        "key ring reloaded: version %d, current key %s, keys %s",
                        self._ring.version,
                        self._ring.current_id,
                        ",".join(self._ring.key_ids),
                    )
                except KeyRingError as exc:
                    log.error("key ring change refused, keeping the previous ring: %s", exc)
                self._seen = seen
            return self._ring

    def summary(self) -> dict[str, object]:
        """{"version", "current", "keys"} of the ring in use (ids only, never material)."""
        return self.get().summary()


class EncryptedArchive:
    """create / read / remove of Orthanc attachments, sealed with envelope encryption."""

    def __init__(
        self, store: ObjectStore, keys: KeyRingSource, algorithm: Algorithm, prefix: str = ""
    ) -> None:
        self.store = store
        self.keys = keys
        self.algorithm = algorithm
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> EncryptedArchive:
        # the key ring first: a bad ring is the error to show even when a store is down
        keys = KeyRingSource(settings.key_ring_file)
        store: ObjectStore
        if settings.backend == "s3":
            assert settings.s3 is not None
            store = s3_store(settings.s3)  # the client that S3.Client names
        else:
            assert settings.filesystem_root is not None
            store = FileStore(settings.filesystem_root)
        if settings.small_conninfo is not None:
            from .small_objects import PostgresStore, TieredStore  # central only: psycopg

            small = PostgresStore(settings.small_conninfo)
            writes = settings.small_attachments == "postgresql"
            store = TieredStore(store, small, settings.key_prefix, write_small=writes)
        return cls(store, keys, settings.algorithm, settings.key_prefix)

    def close(self) -> None:
        """Close the store's own resources, if it has any (e.g. a connection pool)."""
        closer = getattr(self.store, "close", None)
        if closer is not None:
            closer()

    def create(self, attachment_uuid: str, content_type: int, data: bytes) -> None:
        """Seal and store; returns only once the backend confirmed the write."""
        key = object_key(self.prefix, attachment_uuid, content_type)
        blob = seal(
            data,
            object_key=key,
            attachment_type=int(content_type),
            ring=self.keys.get(),
            algorithm=self.algorithm,
        )
        self.store.put(key, blob)

    # Small records outside Orthanc's attachments (e.g. the edge's study records) are sealed
    # with the same key ring, bound to their own name and a type Orthanc never uses.
    RECORD_TYPE = 0x7F00

    def seal_record(self, data: bytes, name: str) -> bytes:
        return seal(
            data,
            object_key=f"record/{name}",
            attachment_type=self.RECORD_TYPE,
            ring=self.keys.get(),
            algorithm=self.algorithm,
        )

    def open_record(self, blob: bytes, name: str) -> bytes:
        return open_sealed(
            blob,
            object_key=f"record/{name}",
            attachment_type=self.RECORD_TYPE,
            ring=self.keys.get(force=True),
        )

    def read(self, attachment_uuid: str, content_type: int) -> bytes:
        key = object_key(self.prefix, attachment_uuid, content_type)
        blob = self.store.get(key)
        try:
            return self._open(blob, key, int(content_type))
        except IntegrityError as exc:
            # With read-ahead, the copy may be one fetched before the object was rewritten
            # (restored, rewrapped under another key, its old key then retired): read it
            # once more from the store itself, and fail only if that copy fails too.
            fresh = getattr(self.store, "get_fresh", None)
            if fresh is None:
                raise
            log.warning("object %s: a copy failed to open (%s); reading it again", key, exc)
            again = fresh(key)
            if again == blob:
                raise
            del blob
            return self._open(again, key, int(content_type))

    def _open(self, blob: bytes, key: str, content_type: int) -> bytes:
        ring = self.keys.get()
        try:
            return open_sealed(blob, object_key=key, attachment_type=content_type, ring=ring)
        except IntegrityError:
            # A key ring rotated moments ago may hold the key: look once more, then fail.
            fresh = self.keys.get(force=True)
            if fresh is ring:
                raise
            return open_sealed(blob, object_key=key, attachment_type=content_type, ring=fresh)

    def remove(self, attachment_uuid: str, content_type: int) -> None:
        self.store.delete(object_key(self.prefix, attachment_uuid, content_type))
