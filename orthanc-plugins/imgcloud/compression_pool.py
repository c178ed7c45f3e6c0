"""JPEG-LS lossless encoding in worker processes, outside the modality's C-STORE.

CharLS through pydicom's pyjpegls plugin: the same bytes as DCMTK's JPEG-LS, 1.05-1.77x
faster per instance (bench/codecs.py, docs/edge.md), and every pixel back on each generator
modality and on pydicom's own files (tests/unit/test_codec_roundtrip.py). It also encodes
what DCMTK 3.6.9's encoder aborts Orthanc on (signed pixels with fewer bits stored than
allocated, tiny images).

Why processes and not the plugin's threads: pyjpegls holds the GIL while it encodes, so in
threads it would serialise on one core and hold up every other Python callback of the
edge. The workers are spawned (never forked: Orthanc is multithreaded) with the plugin's
own interpreter and PYTHONPATH, and run at a lower CPU priority than Orthanc, so receiving
from a modality comes first; each exits when Orthanc does, even SIGKILLed. A worker that
dies (a codec crash) or is stuck breaks every call in flight: each is run again alone, so
only the instance that kills or hangs a worker of its own is kept as received.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from .compression import POLICIES
from .errors import CompressionError, CompressorUnavailable

T = TypeVar("T")

JPEG_LS_LOSSLESS = POLICIES["jpeg-ls-lossless"]
ENCODE_TIMEOUT_S = 120.0  # one instance; a multi-frame of hundreds of MB stays well below
WORKER_NICE = 10


def encode_jpeg_ls(dicom: bytes) -> bytes:
    """Runs in a worker: the instance re-encoded as JPEG-LS lossless, its identity kept
    (pydicom makes a new SOP Instance UID by default, which would break exactly-once
    delivery). Raises whatever pydicom or the codec raise."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom))
    ds.compress(JPEG_LS_LOSSLESS, encoding_plugin="pyjpegls", generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ready() -> None:
    """Each worker's start: below Orthanc's CPU priority, so receiving comes first; gone
    when Orthanc is (even SIGKILLed: a worker holds its own queue's pipe ends and would
    never see EOF); and silent, as pydicom's own warnings may quote a tag's value and
    would reach Orthanc's stderr outside its DeidentifyLogs."""
    os.nice(WORKER_NICE)
    logging.getLogger("pydicom").handlers = [logging.NullHandler()]
    logging.getLogger("pydicom").propagate = False
    warnings.simplefilter("ignore")
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="imgcloud-orphan-watch", daemon=True).start()


def _codec_version() -> str:
    import jpeg_ls  # noqa: F401 - the import is the check
    from pydicom.pixels.encoders import JPEGLSLosslessEncoder

    if not JPEGLSLosslessEncoder.is_available:
        raise CompressorUnavailable("pydicom has no JPEG-LS encoder (pyjpegls missing)")
    return "ok"


def _stop(pool: ProcessPoolExecutor) -> None:
    # shutdown() does not stop a worker stuck in the codec; Python 3.14's
    # terminate_workers() would, 3.13 (Debian 13's) has only the private map
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


class _WorkerDied(Exception):
    """A worker process exited while a call was in flight (any call's, not only this)."""


def interpreter() -> str:
    """The Python the workers run: the plugin's own. Inside Orthanc sys.executable is
    Orthanc or empty; the interpreter of the same version under sys.base_prefix is the one
    the plugin embeds (its C extensions, numpy's among them, must match)."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    major, minor = sys.version_info[:2]
    return str(Path(sys.base_prefix) / "bin" / f"python{major}.{minor}")


MAX_DEFAULT_WORKERS = 8  # each holds a few copies of the instance it encodes


def default_workers() -> int:
    """One per core this Orthanc may run on, at most 8 (ImagingCloud.CompressionWorkers
    sets more, or fewer where a CPU quota, which affinity does not show, applies)."""
    return max(1, min(MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0))))


class CompressionPool:
    """A pool of `workers` encoder processes, started at the first instance."""

    def __init__(
        self, workers: int, timeout_s: float = ENCODE_TIMEOUT_S, python: str | None = None
    ) -> None:
        if workers < 1:
            raise ValueError("a compression pool needs at least one worker")
        self.workers = workers
        self.python = python or interpreter()
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        if self._closed:
            raise CompressorUnavailable("the edge is stopping")
        context = multiprocessing.get_context("spawn")
        context.set_executable(self.python)
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_ready)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is not None:
                return self._pool
            pool = self._new_pool(self.workers)
            try:
                # a worker that cannot start or import the codec would otherwise turn
                # every instance into "kept as received": forwarding waits instead
                pool.submit(_codec_version).result(timeout=self.timeout_s)
            except Exception as exc:
                _stop(pool)
                raise CompressorUnavailable(
                    f"the encoder processes could not start ({self.python}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._pool = pool
            return pool

    def _discard(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        _stop(broken)

    def jpeg_ls(self, dicom: bytes) -> bytes:
        """The instance as JPEG-LS lossless. CompressionError if this instance could not be
        encoded (the caller keeps it as received); CompressorUnavailable if the encoder
        processes could not run at all (forwarding is retried later)."""
        return self.call(encode_jpeg_ls, dicom)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in a worker (fn and its arguments picklable); CompressionError if it
        raised, its worker died, or it ran past the timeout.

        A worker's death, or a stuck worker's removal, breaks every call in flight in the
        pool, not only the guilty one's; each call so broken is run again alone in a
        worker of its own, and only what happens there is held against it."""
        try:
            return self._shared(fn, *args)
        except _WorkerDied:
            return self._alone(fn, *args)

    def _shared(self, fn: Callable[..., T], *args: object) -> T:
        pool = self._executor()
        try:
            future = pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken or discarded meanwhile
            self._discard(pool)
            raise _WorkerDied(str(exc)) from exc
        try:
            return future.result(timeout=self.timeout_s)
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise _WorkerDied(str(exc)) from exc
        except TimeoutError as exc:
            # the worker may be stuck in the codec: only a new pool frees its slot
            self._discard(pool)
            raise _WorkerDied(f"no result within {self.timeout_s:.0f} s") from exc
        except Exception as exc:
            raise CompressionError(f"{type(exc).__name__}: {exc}") from exc

    def _alone(self, fn: Callable[..., T], *args: object) -> T:
        pool = self._new_pool(1)
        try:
            try:
                future = pool.submit(fn, *args)
            except OSError as exc:
                raise CompressorUnavailable(f"an encoder process could not start: {exc}") from exc
            try:
                return future.result(timeout=self.timeout_s)
            except BrokenProcessPool as exc:
                raise CompressionError(f"its encoder process died: {exc}") from exc
            except TimeoutError as exc:
                raise CompressionError(f"no result within {self.timeout_s:.0f} s") from exc
            except Exception as exc:
                raise CompressionError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _stop(pool)

    def close(self) -> None:
        """No new work; the workers are stopped without waiting for them (a stuck one
        would hold Orthanc's shutdown)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)
