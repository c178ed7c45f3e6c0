"""Small attachments in central's PostgreSQL instead of the object store.

Orthanc 1.12.7 with Python plugin 5.0 writes, beside every instance's DICOM file (content
type 1), a ~2 kB "DICOM until pixel data" copy (content type 3), because a Python storage
area cannot read ranges. Each of those was a full S3 PUT. Here they become one row of
`imgcloud_small_objects` in the PostgreSQL every central node already shares (migration
0002 in central-orthanc/migrations/). The row holds the same sealed envelope the bucket
would hold, bound to the same object name and content type: ciphertext at rest, and a
flipped byte fails that attachment alone.

`PostgresStore` is an ObjectStore over that table; `TieredStore` puts the chosen content
types there and everything else in the object store, and is itself an ObjectStore, so the
consistency check and the key census see both. Objects of those types written before (in
the bucket) stay readable and removable: a miss in the table falls back to the bucket.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..central_schema import check_revision
from ..errors import ObjectNotFound, PluginError, StorageUnavailable
from .backends import ObjectStore, StoredObject
from .object_keys import parse_object_key

TABLE = "imgcloud_small_objects"  # from migration 0002; the key column sorts as bytes ("C")
# Content types kept in the table: 3, "DICOM until pixel data" (~2 kB for a CT slice).
# With DICOMweb's metadata cache off (central-orthanc/orthanc.json) Orthanc 1.12.7 writes no
# other attachment but the DICOM file itself (1), which stays in the object store.
SMALL_CONTENT_TYPES = frozenset({3})

# Per central Orthanc process: enough connections for its HTTP threads' short statements
# (one INSERT or SELECT of ~2 kB each); a call waits at most POOL_TIMEOUT_S for one, and
# no statement runs longer than STATEMENT_TIMEOUT_MS, so a stuck PostgreSQL is an error,
# not a hung Orthanc thread.
POOL_MAX_SIZE = 8
POOL_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000
LIST_BATCH = 1000


class PostgresStore:
    """Sealed objects as rows of imgcloud_small_objects (an ObjectStore)."""

    def __init__(self, conninfo: dict[str, Any], max_size: int = POOL_MAX_SIZE) -> None:
        self._pool: ConnectionPool = ConnectionPool(
            kwargs={
                **conninfo,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "autocommit": True,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
            min_size=1,
            max_size=max_size,
            timeout=POOL_TIMEOUT_S,
            name="small-objects",
            num_workers=1,
            open=True,
        )
        try:
            self._pool.wait(timeout=POOL_TIMEOUT_S)
            with self._pool.connection() as conn:
                check_revision(conn)
        except psycopg.Error as exc:
            self._pool.close()
            raise PluginError(
                f"small attachments: no PostgreSQL connection within {POOL_TIMEOUT_S:g} s"
            ) from exc
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    @staticmethod
    def _fail(action: str, key: str, exc: psycopg.Error) -> StorageUnavailable:
        # the class name only: a psycopg message may quote parameters
        return StorageUnavailable(f"PostgreSQL {action} {key}: {type(exc).__name__}")

    def _execute(self, action: str, key: str, query: str, params: tuple[Any, ...]) -> Any:
        """Run one statement; its first row for a SELECT, else its row count. A connection
        found broken (PostgreSQL restarted since it was opened) is replaced and the
        statement, idempotent here, tried once more; any other failure raises at once."""
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    try:
                        cursor = conn.execute(query, params)
                        return cursor.fetchone() if cursor.description else cursor.rowcount
                    except psycopg.OperationalError:
                        if attempt == 1 and conn.broken:
                            continue  # the pool discards it; take another
                        raise
            except psycopg.Error as exc:
                raise self._fail(action, key, exc) from exc
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        self._execute(
            "put",
            key,
            f"""INSERT INTO {TABLE} (object_key, sealed) VALUES (%s, %s)
                ON CONFLICT (object_key) DO UPDATE
                SET sealed = excluded.sealed, stored_at = now()""",  # noqa: S608
            (key, data),
        )

    def get(self, key: str) -> bytes:
        row = self._execute(
            "get",
            key,
            f"SELECT sealed FROM {TABLE} WHERE object_key = %s",  # noqa: S608
            (key,),
        )
        if row is None:
            raise ObjectNotFound(f"object {key}: not found in {TABLE}")
        return bytes(row[0])

    def remove(self, key: str) -> bool:
        """Delete the row; whether there was one."""
        count = self._execute(
            "delete",
            key,
            f"DELETE FROM {TABLE} WHERE object_key = %s",  # noqa: S608
            (key,),
        )
        return bool(count)

    def delete(self, key: str) -> None:
        self.remove(key)

    def replace(self, key: str, old: bytes, new: bytes) -> bool:
        """Store `new` only if the row still holds `old` (a rewrap racing with Orthanc's
        deletion or a fresh write loses, never resurrecting or overwriting); whether it did."""
        count = self._execute(
            "replace",
            key,
            f"UPDATE {TABLE} SET sealed = %s WHERE object_key = %s AND sealed = %s",  # noqa: S608
            (new, key, old),
        )
        return bool(count)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        """Every object whose name starts with `prefix`, after `start_after`, in byte order
        (as S3 lists), fetched in batches on short statements (keyset paging)."""
        after = max(start_after, prefix) if prefix else start_after
        while True:
            try:
                with self._pool.connection() as conn:
                    rows = conn.execute(
                        f"""SELECT object_key, octet_length(sealed), stored_at FROM {TABLE}
                            WHERE object_key > %s AND starts_with(object_key, %s)
                            ORDER BY object_key LIMIT %s""",  # noqa: S608
                        (after, prefix, LIST_BATCH),
                    ).fetchall()
            except psycopg.Error as exc:
                raise self._fail("list", prefix or "/", exc) from exc
            for key, size, stored_at in rows:
                yield StoredObject(key, int(size), stored_at)
            if len(rows) < LIST_BATCH:
                return
            after = rows[-1][0]


def is_small(prefix: str, key: str, content_types: Iterable[int] = SMALL_CONTENT_TYPES) -> bool:
    parsed = parse_object_key(prefix, key)
    return parsed is not None and parsed[1] in frozenset(content_types)


class TieredStore:
    """The chosen content types in PostgreSQL, the rest in the object store (an ObjectStore).

    Reads and deletions of a small type fall back to the object store when the table has
    no such row: attachments written before this store existed (or by a node configured
    with "SmallAttachments": "object-store") stay where they are and keep working.
    """

    def __init__(
        self,
        large: ObjectStore,
        small: PostgresStore,
        prefix: str = "",
        content_types: Iterable[int] = SMALL_CONTENT_TYPES,
        write_small: bool = True,
    ) -> None:
        self.large = large
        self.small = small
        self.prefix = prefix
        self.content_types = frozenset(content_types)
        # False on a node set to "object-store": new small attachments go to the bucket,
        # the rows others wrote are still read, removed, listed and rewrapped
        self.write_small = write_small

    def _small(self, key: str) -> bool:
        return is_small(self.prefix, key, self.content_types)

    def put(self, key: str, data: bytes) -> None:
        (self.small if self.write_small and self._small(key) else self.large).put(key, data)

    def get(self, key: str) -> bytes:
        if self._small(key):
            try:
                return self.small.get(key)
            except ObjectNotFound:
                pass  # written to the bucket before: look there
        return self.large.get(key)

    def delete(self, key: str) -> None:
        if self._small(key) and self.small.remove(key):
            return
        self.large.delete(key)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        """Both stores' objects, merged in name order (so a rewrap checkpoint holds)."""
        return heapq.merge(
            self.large.list(prefix, start_after),
            self.small.list(prefix, start_after),
            key=lambda obj: obj.key,
        )

    def parts(self) -> dict[str, ObjectStore]:
        """Each backing store by name, for maintenance that must act on each on its own."""
        return {"object-store": self.large, "postgresql": self.small}

    def close(self) -> None:
        self.small.close()
