"""Archive maintenance that runs beside a serving Orthanc: key rewrap and consistency check."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import IntegrityError, ObjectNotFound, StorageError
from .backends import ObjectStore
from .envelope import key_id_of, rewrap
from .keyring import KeyRing
from .object_keys import object_key, parse_object_key

log = logging.getLogger(__name__)


@dataclass
class RewrapReport:
    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    vanished: int = 0  # deleted by Orthanc while we worked: nothing to do
    failed: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ReplacingStore(Protocol):
    """A store that can replace an object only if it still holds `old` (PostgreSQL)."""

    def replace(self, key: str, old: bytes, new: bytes) -> bool: ...


def _rewrap_one(store: ObjectStore, ring: KeyRing, key: str) -> str:
    try:
        blob = store.get(key)
    except ObjectNotFound:
        return "vanished"
    moved = rewrap(blob, object_key=key, ring=ring)
    if moved is None:
        return "current"
    if isinstance(store, ReplacingStore):
        # never brings back an object Orthanc deleted meanwhile (a put to S3 can)
        return "rewrapped" if store.replace(key, blob, moved) else "vanished"
    store.put(key, moved)
    return "rewrapped"


def store_parts(store: ObjectStore) -> dict[str, ObjectStore]:
    """The stores behind `store` by name ("object-store", "postgresql"), or just it: a
    rewrap walks each on its own, with its own checkpoint, so that an object is rewritten
    where it lies (an old "until pixel data" object in the bucket stays there)."""
    parts = getattr(store, "parts", None)
    return parts() if callable(parts) else {"object-store": store}


def rewrap_all(
    store: ObjectStore,
    ring: KeyRing,
    *,
    prefix: str = "",
    checkpoint: Path | None = None,
    workers: int = 8,
    batch: int = 256,
    progress: Callable[[RewrapReport], None] = lambda _r: None,
) -> RewrapReport:
    """Move every object to the ring's current master key, only rewriting headers.

    Objects are visited in key order; after each batch the last key is saved to
    `checkpoint`, so an interrupted run resumes where it stopped. The checkpoint never
    passes an object that failed: the next run starts again before the first failure
    (objects already moved count as already current), so none is left on the old key for
    `retire` to make unreadable. The archive keeps serving: a rewrapped object is replaced
    by one atomic PUT and stays readable under either key.
    """
    start_after = checkpoint.read_text().strip() if checkpoint and checkpoint.exists() else ""
    report = RewrapReport()

    def flush(keys: list[str], pool: ThreadPoolExecutor) -> None:
        failed_before = bool(report.failed)
        for key, outcome in zip(keys, pool.map(lambda k: _safe(k), keys), strict=True):
            report.scanned += 1
            if outcome == "rewrapped":
                report.rewrapped += 1
            elif outcome == "current":
                report.already_current += 1
            elif outcome == "vanished":
                report.vanished += 1
            else:
                report.failed[key] = outcome
        if checkpoint and keys and not failed_before:
            done = keys
            for i, key in enumerate(keys):
                if key in report.failed:
                    done = keys[:i]  # the checkpoint stops before the first failure
                    break
            if done:
                checkpoint.write_text(done[-1])
        progress(report)

    def _safe(key: str) -> str:
        try:
            return _rewrap_one(store, ring, key)
        except (IntegrityError, StorageError) as exc:
            return str(exc)

    pending: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for obj in store.list(prefix, start_after):
            if parse_object_key(prefix, obj.key) is None:
                continue
            pending.append(obj.key)
            if len(pending) >= batch:
                flush(pending, pool)
                pending = []
        flush(pending, pool)
    if checkpoint and not report.failed:
        checkpoint.unlink(missing_ok=True)
    return report


@dataclass
class ConsistencyReport:
    objects: int = 0
    index_entries: int = 0
    orphans: list[str] = field(default_factory=list)  # objects with no index entry
    missing: list[str] = field(default_factory=list)  # index entries with no object
    deleted: list[str] = field(default_factory=list)
    young_orphans_kept: int = 0
    foreign_objects: int = 0  # names we do not recognise: listed, never touched

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


def check_consistency(
    store: ObjectStore,
    index_attachments: Iterable[tuple[str, int]],
    *,
    prefix: str = "",
    delete_orphans_older_than: dt.timedelta | None = None,
    now: dt.datetime | None = None,
) -> ConsistencyReport:
    """Compare the bucket with Orthanc's index; optionally delete old orphans.

    An orphan can come from a crash between the storage write and the index write (Orthanc
    writes storage first). Young orphans are kept: an upload in flight looks the same.
    """
    now = now or dt.datetime.now(dt.UTC)
    expected = {object_key(prefix, uuid, int(kind)) for uuid, kind in index_attachments}
    report = ConsistencyReport(index_entries=len(expected))
    seen: set[str] = set()
    for obj in store.list(prefix):
        if parse_object_key(prefix, obj.key) is None:
            report.foreign_objects += 1
            continue
        report.objects += 1
        seen.add(obj.key)
        if obj.key in expected:
            continue
        report.orphans.append(obj.key)
        if delete_orphans_older_than is None:
            continue
        if now - obj.last_modified >= delete_orphans_older_than:
            store.delete(obj.key)
            report.deleted.append(obj.key)
        else:
            report.young_orphans_kept += 1
    report.missing = sorted(expected - seen)
    return report


NOT_SEALED = "(not a sealed object)"


def objects_by_key(store: ObjectStore, prefix: str = "") -> dict[str, int]:
    """How many of the archive's objects each master key id seals, from each object's
    header (the whole object is read: the stores offer no range reads). An object that is
    not one of ours counts under NOT_SEALED; one deleted meanwhile is skipped."""
    counts: dict[str, int] = {}
    for obj in store.list(prefix):
        if parse_object_key(prefix, obj.key) is None:
            continue
        try:
            key_id = key_id_of(store.get(obj.key), obj.key)
        except ObjectNotFound:
            continue
        except IntegrityError:
            key_id = NOT_SEALED
        counts[key_id] = counts.get(key_id, 0) + 1
    return dict(sorted(counts.items()))


def orthanc_pg_attachments(configuration: dict) -> list[tuple[str, int]]:
    """(uuid, content type) of every attachment in a PostgreSQL-indexed Orthanc."""
    import psycopg

    pg = configuration.get("PostgreSQL") or {}
    if not pg.get("EnableIndex"):
        raise StorageError("the consistency check needs Orthanc's PostgreSQL index")
    with psycopg.connect(
        host=pg.get("Host", "localhost"),
        port=int(pg.get("Port", 5432)),
        dbname=pg.get("Database"),
        user=pg.get("Username"),
        password=pg.get("Password"),
        connect_timeout=10,
    ) as conn:
        rows = conn.execute("SELECT uuid, filetype FROM attachedfiles").fetchall()
    return [(str(uuid), int(kind)) for uuid, kind in rows]


def load_orthanc_configuration(path: Path) -> dict:
    return json.loads(path.read_text())
