"""The edge's background compression and replace run below Orthanc's CPU priority, so the
modality's C-STORE (Orthanc's own threads) goes first on a busy core (#13)."""

from __future__ import annotations

import os
import threading

from imgcloud.in_place import BACKGROUND_NICE, InPlaceCompressor, Replacer


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_compression_runs_at_a_lower_priority_than_the_caller() -> None:
    seen: list[int] = []
    files = {"a": b"RAW-a"}

    def compressed(dicom: bytes) -> bytes:
        seen.append(own_nice())
        return b"JLS-a"

    compressor = InPlaceCompressor(files.__getitem__, lambda out: None, compressed, 1)
    try:
        caller = own_nice()
        assert compressor.arrived("a")
        assert compressor.read("a") == b"JLS-a"  # waits for the background compression
        assert seen and seen[0] == min(caller + BACKGROUND_NICE, 19)
        assert own_nice() == caller  # the caller's own thread is left as it was
    finally:
        compressor.close()


def test_the_replace_loop_lowers_its_own_thread_only() -> None:
    seen: list[int] = []
    compressor = InPlaceCompressor(lambda _i: b"", lambda out: None, lambda d: None, 1)
    replacer = Replacer(compressor)
    caller = own_nice()

    def round_in_a_thread() -> None:
        replacer.work()  # nothing pending: False, but the thread is lowered first
        seen.append(own_nice())

    thread = threading.Thread(target=round_in_a_thread)
    thread.start()
    thread.join(10)
    compressor.close()
    assert seen == [min(caller + BACKGROUND_NICE, 19)]
    assert own_nice() == caller
