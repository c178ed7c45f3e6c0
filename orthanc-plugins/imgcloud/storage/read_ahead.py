"""Read-ahead for study and series retrieval from the encrypted S3 archive.

Orthanc's DICOMweb plugin (1.20) answers a WADO-RS study or series by listing its
instances (`/studies/{id}/instances`) and reading each one's DICOM file (attachment type 1)
through our storage area, one after the other: one serial S3 GET per instance. Central's
HTTP filter sees the WADO-RS request first (`/dicom-web/studies/<uid>[/series/<uid>]...`):
ReadAhead.retrieval() asks Orthanc (through the glue) for the same instance list DICOMweb
is about to ask for, so the order is Orthanc's own (not internalid order: bench.read_ahead
found that wrong for a study ingested by parallel clients), and looks up their DICOM files'
uuids in Orthanc's PostgreSQL index by public ID (indexed; AttachedFiles has no index on
uuid). When the storage area is then asked for one of them, ReadAheadStore fetches the
next few of its series concurrently into a small cache of CIPHERTEXT. The later read takes
its entry out and only decrypts it: EncryptedArchive.read still opens (verifies the GCM tag
of) every object before any byte of it is served, with the key ring current at read time,
and a tampered object still fails alone. Orthanc's plaintext cache stays off (docs/archive.md).
An entry is served only if its header names a key the ring holds at that moment: one
fetched before a `rewrap` replaced the object and a `retire` then dropped its old key would
no longer open, so the read does its own GET of the object as it is now.

Bounds: `max_bytes` of ciphertext held or in flight (reserved from the index's size before
a GET starts), `workers` threads, `depth` objects ahead of the read, entries dropped unread
after `ttl_s`, a read waits at most `wait_s` for its prefetch. A failed, late or missing
prefetch only means the read does its own GET (and raises its own error). Each central node
has its own cache; nothing is shared. The worker threads call the S3 client only: never the
`orthanc` module and never `logging` (whose handler calls it).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError
from .backends import ObjectStore, StoredObject
from .envelope import key_id_of
from .object_keys import object_key, parse_object_key

if TYPE_CHECKING:
    from .archive import EncryptedArchive, KeyRingSource

DICOM_FILE = 1  # Orthanc's attachment type of the DICOM file
ENVELOPE_SLACK = 1024  # the envelope's header and tag over the plaintext size, generously


@dataclass(frozen=True)
class ReadAheadSettings:
    """ImagingCloud.ReadAhead of central's configuration (plugin_settings validates it)."""

    enabled: bool = True
    depth: int = 8  # objects fetched ahead of the one read
    workers: int = 4  # threads doing those GETs
    max_bytes: int = 64 * 1024 * 1024  # ciphertext held or in flight, at most
    ttl_s: float = 10.0  # an entry unread this long is dropped
    wait_s: float = 10.0  # the longest a read waits for its prefetch in flight
    listing_ttl_s: float = 30.0  # a series listing is looked up again after this
    dicomweb_root: str = "/dicom-web/"  # DicomWeb.Root: the retrievals announced


Listing = Sequence[tuple[str, int]]  # (attachment uuid, size) of a series' DICOM files


@dataclass
class _Entry:
    future: Future[bytes]
    reserved: int
    started: float


@dataclass
class _Stats:
    hits: int = 0  # reads answered from a finished prefetch
    waited: int = 0  # reads that waited for a prefetch in flight
    misses: int = 0  # type-1 reads that did their own GET
    failed: int = 0  # prefetches that failed or came too late (the read did its own GET)
    prefetched: int = 0  # GETs started ahead
    dropped: int = 0  # entries dropped unread (expired, evicted, oversized)
    announced: int = 0  # WADO-RS retrievals whose listings were looked up
    lookup_errors: int = 0  # listings that could not be read (no read-ahead then)
    skipped_full: int = 0  # prefetches not started: the byte bound was reached
    refetched: int = 0  # GET again: a copy sealed under a retired key, or one that failed to open


class ReadAheadStore:
    """An ObjectStore that fetches the next DICOM files of a series ahead of their read."""

    def __init__(
        self,
        store: ObjectStore,
        settings: ReadAheadSettings,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
        servable: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.prefix = prefix
        self._clock = clock
        # (key, fetched ciphertext) -> may it be served? None: every entry may
        self._servable = servable
        # reentrant: a future already done runs its callback (which locks) in add_done_callback
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._reserved = 0
        self._listings: dict[str, tuple[float, Listing, int]] = {}  # uuid -> (until, list, i)
        self._stats = _Stats()
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="imgcloud-ahead")
        self._closed = False

    # -- ObjectStore -------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        parsed = parse_object_key(self.prefix, key)
        if parsed is None or parsed[1] != DICOM_FILE:
            return self.store.get(key)
        entry = self._take(key)
        self._read_ahead_of(parsed[0])
        if entry is not None:
            waited = not entry.future.done()
            try:
                blob = entry.future.result(timeout=self.settings.wait_s)
            except Exception:  # any failure: the read does its own GET
                entry.future.cancel()
                self._count("failed")
            else:
                if self._servable is None or self._servable(key, blob):
                    self._count("waited" if waited else "hits")
                    return blob
                self._count("refetched")
                return self.store.get(key)  # the object as it is now, not the cached copy
        self._count("misses")
        return self.store.get(key)

    def get_fresh(self, key: str) -> bytes:
        """The object as the store holds it now: no cached copy, nothing read ahead (the
        archive's second read of a copy that failed to open)."""
        self._evict(key)
        self._count("refetched")
        return self.store.get(key)

    def put(self, key: str, data: bytes) -> None:
        self._evict(key)
        self.store.put(key, data)

    def delete(self, key: str) -> None:
        self._evict(key)
        self.store.delete(key)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[StoredObject]:
        return self.store.list(prefix, start_after)

    # -- status and shutdown -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": True,
                **asdict(self._stats),
                "held": len(self._entries),
                "held_bytes": self._reserved,
                "depth": self.settings.depth,
                "workers": self.settings.workers,
                "max_bytes": self.settings.max_bytes,
            }

    def close(self) -> None:
        """Stop prefetching; GETs in flight finish within the S3 client's timeouts."""
        with self._lock:
            self._closed = True
            for entry in self._entries.values():
                entry.future.cancel()
            self._entries.clear()
            self._reserved = 0
        self._pool.shutdown(wait=False, cancel_futures=True)
        closer = getattr(self.store, "close", None)  # e.g. the small attachments' pool
        if closer is not None:
            closer()

    # -- internals ---------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)

    def _take(self, key: str) -> _Entry | None:
        """The entry of `key`, taken out; None if none, or only a stale one."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            self._reserved -= entry.reserved
            if entry.future.done() and self._clock() - entry.started > self.settings.ttl_s:
                self._stats.dropped += 1
                return None
            return entry

    def _evict(self, key: str) -> None:
        entry = self._take(key)
        if entry is not None:
            entry.future.cancel()
            self._count("dropped")

    def announce(self, listings: Sequence[Listing]) -> None:
        """Series about to be read: each a list of (uuid, size) in the order of reading."""
        until = self._clock() + self.settings.listing_ttl_s
        with self._lock:
            if len(self._listings) > 200_000:  # far beyond a few studies: start afresh
                now = self._clock()
                self._listings = {u: v for u, v in self._listings.items() if v[0] > now}
                if len(self._listings) > 200_000:
                    self._listings.clear()
            for listing in listings:
                frozen = tuple(listing)
                for i, (uuid, _size) in enumerate(frozen):
                    self._listings[uuid] = (until, frozen, i)

    def _listing(self, uuid: str) -> tuple[Listing, int] | None:
        """The announced series listing holding `uuid` and its place there."""
        with self._lock:
            known = self._listings.get(uuid)
        if known is None or known[0] <= self._clock():
            return None
        return known[1], known[2]

    def _drop_stale(self, now: float) -> None:
        """Entries finished and unread for ttl_s go (lock held)."""
        stale = [
            k
            for k, e in self._entries.items()
            if e.future.done() and now - e.started > self.settings.ttl_s
        ]
        for k in stale:
            self._reserved -= self._entries.pop(k).reserved
        self._stats.dropped += len(stale)

    def _read_ahead_of(self, uuid: str) -> None:
        found = self._listing(uuid)
        if found is None:
            return
        listing, place = found
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            self._drop_stale(now)
            for other, size in listing[place + 1 : place + 1 + self.settings.depth]:
                key = object_key(self.prefix, other, DICOM_FILE)
                if key in self._entries:
                    continue
                reserve = max(int(size), 0) + ENVELOPE_SLACK
                if self._reserved + reserve > self.settings.max_bytes:
                    self._stats.skipped_full += 1
                    break
                try:
                    future = self._pool.submit(self.store.get, key)
                except RuntimeError:  # the pool was shut down meanwhile
                    return
                self._entries[key] = _Entry(future, reserve, now)
                self._reserved += reserve
                self._stats.prefetched += 1
                future.add_done_callback(partial(self._fetched, key))

    def _fetched(self, key: str, future: Future[bytes]) -> None:
        """A prefetch finished (worker thread): account its real size, drop it if that
        breaks the byte bound. No logging here (its handler calls the orthanc module)."""
        if future.cancelled() or future.exception() is not None:
            return
        size = len(future.result())
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.future is not future:
                return
            extra = size - entry.reserved
            if extra > 0:
                if self._reserved + extra > self.settings.max_bytes:
                    self._reserved -= self._entries.pop(key).reserved
                    self._stats.dropped += 1
                    return
                entry.reserved = size
                self._reserved += extra


# Orthanc's PostgreSQL index (plugin 5.0 schema): resources(internalid, resourcetype (3 is an
# instance), publicid (indexed), parentid), attachedfiles(id = the instance, filetype, uuid,
# compressedsize, ...; keyed by id and filetype; no index on uuid).
FILES_SQL = """
SELECT instance.publicid, file.uuid, file.compressedsize
FROM resources AS instance
JOIN attachedfiles AS file ON file.id = instance.internalid AND file.filetype = %(type)s
WHERE instance.publicid = ANY(%(ids)s) AND instance.resourcetype = 3
"""
LISTING_LIMIT = 50_000  # instances of one retrieval looked up, at most
STATEMENT_TIMEOUT_MS = 2000


class AttachmentIndex:
    """The DICOM file (uuid, size) of Orthanc instances, from Orthanc's PostgreSQL index,
    through a small pool of its own."""

    def __init__(self, conninfo: dict[str, Any]) -> None:
        from ..instance_hashes import open_pool

        # A stuck index fails the lookup (no read-ahead) instead of holding the request.
        timeout = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        self._pool = open_pool(conninfo, "read-ahead", options=timeout)

    def close(self) -> None:
        self._pool.close()

    def __call__(self, instance_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        args = {"ids": list(instance_ids[:LISTING_LIMIT]), "type": DICOM_FILE}
        with self._pool.connection() as conn:
            rows = conn.execute(FILES_SQL, args).fetchall()
        return {str(i): (str(u), int(size)) for i, u, size in rows}


def sealed_under_a_held_key(keys: KeyRingSource, key: str, blob: bytes) -> bool:
    """Whether a fetched copy names a master key the ring holds now (the ring file looked
    at again, so the read right after opens it with this same ring). A copy from before a
    rewrap and a retire names the retired key: the object is read again from the store.
    A copy whose header does not parse is read again too (the read then fails on the
    store's own copy, as it would without read-ahead)."""
    try:
        key_id = key_id_of(blob, key)
    except IntegrityError:
        return False
    return keys.get(force=True).get(key_id) is not None


_UID = r"[0-9.]{1,64}"


def _is_get(method: object) -> bool:
    if isinstance(method, str):
        return method.upper() == "GET"
    try:
        return int(method) == 1  # type: ignore[call-overload]  # OrthancPluginHttpMethod_Get
    except (TypeError, ValueError):
        return False


# (study uid, series uid or None) -> Orthanc instance IDs per series, in the order Orthanc
# lists them (the glue asks Orthanc's /studies/{id}/instances, as DICOMweb then does)
OrderOf = Callable[[str, str | None], list[list[str]]]
FilesOf = Callable[[Sequence[str]], dict[str, tuple[str, int]]]


class ReadAhead:
    """Read-ahead installed on an archive: its store wrapped, retrievals announced by the
    HTTP filter, and what close() undoes."""

    def __init__(
        self,
        archive: EncryptedArchive,
        settings: ReadAheadSettings,
        order_of: OrderOf,
        files_of: FilesOf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.order_of = order_of
        self.files_of = files_of
        self.settings = settings
        self.store = ReadAheadStore(
            archive.store,
            settings,
            archive.prefix,
            clock,
            servable=partial(sealed_under_a_held_key, archive.keys),
        )
        archive.store = self.store  # EncryptedArchive.read looks its store up on every call
        root = re.escape("/" + settings.dicomweb_root.strip("/") + "/")
        # Whole-study and whole-series retrievals only: a single instance's frames,
        # metadata or rendering would otherwise prefetch its series' next files for every
        # request (the archive bench's frame p50 went from 5-7 to 12.5 ms on the fair
        # layout, the object store's core busy with GETs nobody read).
        self._wado = re.compile(rf"^{root}studies/({_UID})(?:/series/({_UID}))?/?$")
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str | None], float] = {}  # looked up, until

    def retrieval(self, method: object, uri: str) -> None:
        """An HTTP request (from the filter, before Orthanc answers it): a WADO-RS GET of a
        study or series announces its listings. Never raises: no read-ahead at worst.
        `method` as the filter has it: the SDK's number (1 is GET) or a name."""
        if not uri.startswith(self.settings.dicomweb_root) or not _is_get(method):
            return
        match = self._wado.match(uri)
        if match is None:
            return
        wanted = (match[1], match[2])
        now = self._clock()
        with self._lock:
            if self._recent.get(wanted, 0.0) > now:
                return  # the same retrieval again: one lookup per listing_ttl_s / 2
            if len(self._recent) > 10_000:
                self._recent = {k: t for k, t in self._recent.items() if t > now}
            self._recent[wanted] = now + self.settings.listing_ttl_s / 2
        try:
            order = self.order_of(*wanted)
            files = self.files_of([i for series in order for i in series])
        except Exception:  # a lookup that fails only means no read-ahead
            self.store._count("lookup_errors")
            return
        self.store._count("announced")
        self.store.announce([[files[i] for i in series if i in files] for series in order])

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def close(self) -> None:
        self.store.close()
        closer = getattr(self.files_of, "close", None)
        if closer is not None:
            closer()
