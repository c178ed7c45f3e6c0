"""Each arriving instance compressed in the background, its local copy replaced, before
forwarding asks for it; forwarding reads through here, so an instance still being
compressed is waited for, never encoded twice, and one never compressed (a restart came
first) is compressed on that read.

The modality's C-STORE never waits for any of it: Orthanc stores the instance as
received, its NEW_INSTANCE change brings it here (imgcloud.edge_app), and `threads`
instances are compressed at a time (the encoding itself runs in
imgcloud.compression_pool's processes). A crash loses nothing: until the compressed copy
is stored, the received one is the only copy, and the next read compresses it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

WAIT_S = 300.0  # for a compression in flight: longer than the encoder's own timeout
REMEMBERED = 10_000  # our own replacements whose NEW_INSTANCE has not come back yet


class InPlaceCompressor:
    def __init__(
        self,
        read: Callable[[str], bytes],  # instance ID -> the file as the edge holds it
        replace: Callable[[bytes], None],  # store the compressed copy over the received one
        compressed: Callable[[bytes], bytes | None],  # None: keep as received
        threads: int,
    ) -> None:
        self._read = read
        self._replace = replace
        self._compressed = compressed
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imgcloud-compress")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[bytes]] = {}
        self._own: set[str] = set()

    def arrived(self, instance_id: str) -> bool:
        """An instance was stored. False if it was our own replacement coming back (the
        hash forwarding knows is then still right); True otherwise, and it is queued."""
        with self._lock:
            if instance_id in self._own:
                self._own.discard(instance_id)
                return False
            if instance_id not in self._inflight:
                self._inflight[instance_id] = self._pool.submit(self._background, instance_id)
        return True

    def read(self, instance_id: str) -> bytes:
        """The instance as it is to be forwarded: compressed if the rules say so."""
        with self._lock:
            running = self._inflight.get(instance_id)
        if running is not None:
            try:
                return running.result(timeout=WAIT_S)
            except Exception:  # noqa: S110 - logged in _background; tried again below
                pass
        return self._compress(instance_id)

    def _background(self, instance_id: str) -> bytes:
        try:
            return self._compress(instance_id)
        except Exception as exc:
            # forwarding will read it again and meet the same error with a study to fail
            log.warning("background compression of instance %s failed: %s", instance_id, exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(instance_id, None)

    def _compress(self, instance_id: str) -> bytes:
        data = self._read(instance_id)
        out = self._compressed(data)
        if out is None:
            return data
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
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
