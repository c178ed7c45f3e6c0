"""The edge's encoder processes: real worker processes, real CharLS (pyjpegls)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from imgcloud.compression import CompressionPolicy, compress
from imgcloud.compression_pool import JPEG_LS_LOSSLESS, CompressionPool, interpreter
from imgcloud.errors import CompressionError, CompressorUnavailable, ForwardingError
from pydicom import dcmread
from pydicom.dataset import Dataset

from deploy.samples.studies import make_study
from deploy.stack.settings import REPO_ROOT

from ..support import pool_tasks

pytest.importorskip("jpeg_ls", reason="pyjpegls (CharLS) is not installed")


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pool():
    pool = CompressionPool(2, timeout_s=60)
    yield pool
    pool.close()


def signed_12_bit_ct() -> Dataset:
    """CT as many scanners send it: signed, 12 of 16 bits (DCMTK's encoder aborts on it)."""
    ds = next(make_study(31, "CT", instances=1).instances())
    ds.PixelRepresentation = 1
    ds.BitsStored, ds.HighBit = 12, 11
    ds.RescaleIntercept = 0
    hu = ds.pixel_array.astype(np.int32) - 1024
    ds.PixelData = np.clip(hu, -2048, 2047).astype(np.int16).tobytes()
    return ds


def test_signed_12_bit_ct_is_compressed_and_every_pixel_comes_back(pool) -> None:
    original = signed_12_bit_ct()
    out = pool.jpeg_ls(encoded(original))
    got = dcmread(io.BytesIO(out))
    assert got.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    assert got.SOPInstanceUID == original.SOPInstanceUID  # identity kept
    assert len(out) * 2 < len(encoded(original))
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_the_policy_sends_jpeg_ls_through_the_pool(pool) -> None:
    ds = next(make_study(32, "MR", instances=1).instances())
    policy = CompressionPolicy.from_name("jpeg-ls-lossless")
    out = compress(encoded(ds), policy, lambda dicom, _target: pool.jpeg_ls(dicom))
    assert out is not None
    assert np.array_equal(dcmread(io.BytesIO(out)).pixel_array, ds.pixel_array)


def test_what_the_codec_refuses_is_an_error_the_caller_keeps_as_received(pool) -> None:
    with pytest.raises(CompressionError):
        pool.jpeg_ls(b"not dicom at all")
    policy = CompressionPolicy.from_name("jpeg-ls-lossless")
    ds = next(make_study(33, "DX", instances=1).instances())
    ds.BitsAllocated = ds.BitsStored = 32  # CharLS encodes at most 16 bits
    ds.HighBit = 31
    ds.PixelData = bytes(ds.Rows * ds.Columns * 4)
    assert compress(encoded(ds), policy, lambda dicom, _t: pool.jpeg_ls(dicom)) is None


def test_a_worker_that_dies_fails_its_instance_only_and_the_pool_recovers(pool) -> None:
    with pytest.raises(CompressionError, match="died"):
        pool.call(os._exit, 3)
    ds = next(make_study(34, "CT", instances=1).instances())
    assert dcmread(io.BytesIO(pool.jpeg_ls(encoded(ds)))).SOPInstanceUID == ds.SOPInstanceUID


def test_a_worker_death_is_held_against_its_own_call_only() -> None:
    """Every call in flight breaks when one worker dies; each is run again alone, so the
    innocent ones still succeed and only the poisonous one fails."""
    pool = CompressionPool(2, timeout_s=60)
    try:
        with ThreadPoolExecutor(4) as threads:
            innocent = [threads.submit(pool.call, pool_tasks.after, 1.5, n) for n in range(3)]
            time.sleep(0.2)
            poison = threads.submit(pool.call, pool_tasks.die_after, 0.3)
            assert [f.result(timeout=120) for f in innocent] == [0, 1, 2]
            with pytest.raises(CompressionError, match="died"):
                poison.result(timeout=120)
    finally:
        pool.close()


def test_workers_do_not_outlive_a_sigkilled_orthanc(tmp_path) -> None:
    script = (
        "import sys, time\n"
        "from imgcloud.compression_pool import CompressionPool\n"
        "from tests.support import pool_tasks\n"
        "print(CompressionPool(1).call(pool_tasks.worker_pid), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env=os.environ | {"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'orthanc-plugins'}"},
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists(), "the worker outlived its Orthanc"


def test_inside_orthanc_the_workers_run_the_embedded_pythons_own_version(monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", "/usr/sbin/Orthanc")
    python = Path(interpreter())
    assert python.name == f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert python.parent == Path(sys.base_prefix) / "bin"
    assert python.exists()


def test_a_closed_pool_takes_no_work() -> None:
    pool = CompressionPool(1, timeout_s=30)
    assert pool.call(sum, [2, 3]) == 5
    pool.close()
    with pytest.raises(CompressorUnavailable, match="stopping"):
        pool.call(sum, [1])


def test_a_stuck_worker_times_out_and_is_replaced() -> None:
    pool = CompressionPool(1, timeout_s=1)
    try:
        started = time.monotonic()
        with pytest.raises(CompressionError, match="within"):
            pool.call(time.sleep, 30)
        assert time.monotonic() - started < 20
        assert pool.call(sum, [1, 2, 3]) == 6  # a new worker, not the stuck one
    finally:
        pool.close()


def test_workers_run_at_lower_priority(pool) -> None:
    assert pool.call(os.nice, 0) >= os.nice(0) + 10


def test_encoders_that_cannot_start_hold_forwarding_back_rather_than_send_uncompressed(
    tmp_path,
) -> None:
    pool = CompressionPool(1, timeout_s=30, python=str(tmp_path / "no-python"))
    policy = CompressionPolicy.from_name("jpeg-ls-lossless")
    ds = next(make_study(35, "CT", instances=1).instances())
    assert issubclass(CompressorUnavailable, ForwardingError)  # the queue retries it
    with pytest.raises(CompressorUnavailable, match="could not start"):
        compress(encoded(ds), policy, lambda dicom, _t: pool.jpeg_ls(dicom))
    pool.close()


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CompressionPool(0)
