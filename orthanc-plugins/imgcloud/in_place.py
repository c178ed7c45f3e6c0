"""Each arriving instance compressed in the background before forwarding asks for it, and
its local copy replaced by the compressed one once the modality has stopped sending;
forwarding reads through here, so an instance still being compressed is waited for, never
encoded twice, and one never compressed (a restart came first) is compressed on that read.

The modality's C-STORE never waits for any of it: Orthanc stores the instance as
received, its NEW_INSTANCE change brings it here (imgcloud.edge_app), and `threads`
instances are compressed at a time (the encoding itself runs in
imgcloud.compression_pool's processes). No REST call per instance on that way when the
C-STORE filter saw it: the file it saw is what Orthanc stored, so it is compressed from
those bytes (imgcloud.orthanc_ids, within a budget), and the copy stored at once is kept
for forwarding's read; only what the filter did not see, or what is over a budget, is
read back from Orthanc.

The replace (storing the compressed copy over the received one through Orthanc's REST API)
costs the edge about as much as receiving the instance did, so it is deferred while the
modality sends (`defer_s`, ImagingCloud.ReplaceAfterIdleSeconds): the compressed bytes are
kept in memory, up to `keep_bytes`, and forwarding sends those. An instance is replaced
once no C-STORE has come for `defer_s`, and forwarding has confirmed it (so a drain does
not share the edge with the replaces), or its bytes were not kept (over the budget: nothing
to gain by waiting), or it has waited HOLD_S (forwarding is off or central is down). An
edge that never falls idle replaces what has waited BUSY_S anyway. `defer_s` 0 replaces
at once, as each compression ends.

A crash loses nothing: until the compressed copy is stored, the received one is the only
copy, and the next read compresses it again (CharLS is deterministic: the same bytes, so
the hash forwarding recorded still holds). What a crash leaves uncompressed after central
confirmed it stays so at the edge (forwarding does not read a confirmed instance again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .errors import CompressorUnavailable
from .worker import Worker

log = logging.getLogger(__name__)

WAIT_S = 300.0  # for a compression in flight: longer than the encoder's own timeout
REMEMBERED = 10_000  # our own replacements whose NEW_INSTANCE has not come back yet
HOLD_S = 60.0  # idle, unconfirmed and kept: replaced after this anyway
RECEIVED_BYTES = 32 * 1024 * 1024  # received files waiting for a compression thread
RECENT_BYTES = 64 * 1024 * 1024  # replaced at once: local copies just stored, for forwarding
BUSY_S = 600.0  # never idle: replaced after this anyway, during C-STOREs


@dataclass
class _Pending:
    since: float  # when it was compressed (monotonic)
    confirmed: bool = False  # by central, through forwarding


class InPlaceCompressor:
    def __init__(
        self,
        read: Callable[[str], bytes],  # instance ID -> the file as the edge holds it
        replace: Callable[[bytes], None],  # store the compressed copy over the received one
        compressed: Callable[[bytes], bytes | None],  # None: keep as received
        threads: int,
        *,
        defer_s: float = 0.0,  # 0: replace as soon as compressed
        keep_bytes: int = 256 * 1024 * 1024,
        exists: Callable[[str], bool] = lambda _instance_id: True,
        clock: Callable[[], float] = time.monotonic,
        received_bytes: int = RECEIVED_BYTES,
        recent_bytes: int = RECENT_BYTES,
    ) -> None:
        self._read = read
        self._replace = replace
        self._compressed = compressed
        self._exists = exists
        self.defer_s = defer_s
        self.keep_bytes = keep_bytes
        self.received_bytes = received_bytes
        self._received = 0  # bytes of received files handed over, not yet compressed
        # replaced at once (defer_s 0): what the background just stored as the local copy,
        # oldest first, until forwarding reads it (its hash is of these bytes); a streaming
        # study is then not read back from Orthanc while the modality sends
        self.recent_bytes = recent_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_total = 0
        self._clock = clock
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imgcloud-compress")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[bytes]] = {}
        self._own: set[str] = set()
        self._pending: dict[str, _Pending] = {}  # compressed, local copy not yet replaced
        self._kept: dict[str, bytes] = {}  # their compressed bytes, within keep_bytes
        self._kept_bytes = 0
        self._last_cstore = clock()
        self.replacer = Replacer(self)

    # -- what the edge tells it ---------------------------------------------------------
    def cstore(self) -> None:
        """A C-STORE (or a stored instance) came: the modality is sending."""
        self._last_cstore = self._clock()

    def arrived(self, instance_id: str, received: bytes | None = None) -> bool:
        """An instance was stored. False if it was our own replacement coming back (the
        hash forwarding knows is then still right); True otherwise, and it is queued.

        `received` is the file as the C-STORE filter saw it (imgcloud.orthanc_ids), which
        is what Orthanc stored: compressed from those bytes, the instance is not read back
        from Orthanc (a REST read in the modality's way). Up to `received_bytes` of them
        wait for a thread; beyond that, or without them, the instance is read back."""
        with self._lock:
            if instance_id in self._own:
                self._own.discard(instance_id)
                return False
            self._last_cstore = self._clock()
            self._drop(instance_id)  # a new copy (REST upload): what was kept is not it
            if instance_id not in self._inflight:
                if received is not None:
                    if self._received + len(received) > self.received_bytes:
                        received = None  # over the budget: read back from Orthanc
                    else:
                        self._received += len(received)
                self._inflight[instance_id] = self._pool.submit(
                    self._background, instance_id, received
                )
        return True

    def confirmed(self, instance_ids: Iterable[str]) -> None:
        """Central confirmed these: their local copies may be replaced once idle."""
        with self._lock:
            for instance_id in instance_ids:
                if (entry := self._pending.get(instance_id)) is not None:
                    entry.confirmed = True
        self.replacer.notify()

    def read(self, instance_id: str) -> bytes:
        """The instance as it is to be forwarded: compressed if the rules say so."""
        with self._lock:
            kept = self._kept.get(instance_id)
            running = self._inflight.get(instance_id)
            recent = self._take_recent(instance_id) if running is None else None
        if kept is not None:
            return kept
        if recent is not None:
            return recent  # the local copy as the background just stored it
        if running is not None:
            try:
                out = running.result(timeout=WAIT_S)
            except Exception:  # noqa: S110 - logged in _background; tried again below
                pass
            else:
                with self._lock:
                    self._take_recent(instance_id)  # read now: not kept any longer
                return out
        return self._compress(instance_id)

    def pending(self) -> int:
        """Instances compressed whose local copy is not replaced yet."""
        with self._lock:
            return len(self._pending)

    # -- the work -----------------------------------------------------------------------
    def _background(self, instance_id: str, received: bytes | None = None) -> bytes:
        try:
            return self._compress(instance_id, received, remember=True)
        except Exception as exc:
            # forwarding will read it again and meet the same error with a study to fail
            log.warning("background compression of instance %s failed: %s", instance_id, exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(instance_id, None)
                if received is not None:
                    self._received -= len(received)

    def _compress(
        self, instance_id: str, received: bytes | None = None, *, remember: bool = False
    ) -> bytes:
        """The instance compressed (the received bytes if given, else read back), stored
        over the local copy at once (defer_s 0) or pending. `remember`: the background's
        arrival (not forwarding's read), whose local copy is kept for forwarding."""
        data = received if received is not None else self._read(instance_id)
        out = self._compressed(data)
        if out is None:
            if remember and self.defer_s <= 0:
                self._remember(instance_id, data)  # kept as received: the local copy
            return data
        if self.defer_s <= 0:
            if remember:
                self._remember(instance_id, out)  # before the store: a new copy drops it
            try:
                self._store(instance_id, out)
            except BaseException:
                with self._lock:
                    self._take_recent(instance_id)
                raise
            return out
        with self._lock:
            self._pending.setdefault(instance_id, _Pending(self._clock()))
            if instance_id not in self._kept and self._kept_bytes + len(out) <= self.keep_bytes:
                self._kept[instance_id] = out  # else forwarding compresses it again
                self._kept_bytes += len(out)
        self.replacer.notify()
        return out

    def _store(self, instance_id: str, out: bytes) -> None:
        with self._lock:
            if len(self._own) >= REMEMBERED:
                self._own.clear()  # only an optimisation: forgotten ones are re-read once
            self._own.add(instance_id)
        try:
            self._replace(out)
        except BaseException:
            with self._lock:
                self._own.discard(instance_id)
            raise

    def _remember(self, instance_id: str, local_copy: bytes) -> None:
        """Keep what the local copy is (now) for forwarding's read, within recent_bytes."""
        if len(local_copy) > self.recent_bytes:
            return
        with self._lock:
            self._take_recent(instance_id)
            self._recent[instance_id] = local_copy
            self._recent_total += len(local_copy)
            while self._recent_total > self.recent_bytes:
                self._take_recent(next(iter(self._recent)))

    def _take_recent(self, instance_id: str) -> bytes | None:
        """Lock held."""
        data = self._recent.pop(instance_id, None)
        if data is not None:
            self._recent_total -= len(data)
        return data

    def _drop(self, instance_id: str) -> None:
        """Forget a pending instance (lock held)."""
        self._take_recent(instance_id)  # a new copy: what the local copy was is not it
        self._pending.pop(instance_id, None)
        kept = self._kept.pop(instance_id, None)
        if kept is not None:
            self._kept_bytes -= len(kept)

    def _due(self) -> str | None:
        """The oldest instance whose local copy is due to be replaced now (lock held);
        the dict is in the order they were compressed."""
        now = self._clock()
        if now - self._last_cstore < self.defer_s:  # the modality sends: the oldest only
            oldest = next(iter(self._pending.items()), None)
            return oldest[0] if oldest and now - oldest[1].since >= BUSY_S else None
        for instance_id, entry in self._pending.items():
            if entry.confirmed or instance_id not in self._kept or now - entry.since >= HOLD_S:
                return instance_id
        return None

    def replace_one(self) -> bool:
        """Replace one due instance's local copy; True if it did (more may be due)."""
        with self._lock:
            instance_id = self._due()
            if instance_id is None:
                return False
            entry = self._pending[instance_id]
            out = self._kept.get(instance_id)  # stays readable while it is stored
        try:
            if out is None:  # not kept: compressed again, as forwarding would
                out = self._compressed(self._read(instance_id))
            with self._lock:
                current = self._pending.get(instance_id) is entry  # no new copy meanwhile
            if current and out is not None and self._exists(instance_id):
                self._store(instance_id, out)
        except CompressorUnavailable:
            raise  # encoders down: the loop backs off, the instance stays pending
        except Exception as exc:  # the received copy stays, as it is: nothing is lost
            log.warning("the local copy of instance %s was not replaced: %s", instance_id, exc)
        with self._lock:
            if self._pending.get(instance_id) is entry:
                self._drop(instance_id)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Replacer(Worker):
    """The loop that replaces local copies once the edge is idle of C-STOREs."""

    name = "imgcloud-replace"

    def __init__(self, compressor: InPlaceCompressor) -> None:
        super().__init__(every_s=0.25)
        self.compressor = compressor

    def work(self) -> bool:
        return self.compressor.replace_one()
