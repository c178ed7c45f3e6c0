"""The edge's intake without a REST call per instance (imgcloud.edge_app with
imgcloud.orthanc_ids, #13): what the C-STORE filter passes is queued under the study it
computed and compressed from the bytes it saw; whatever it did not see (a REST upload, a
retrieval, an instance received before a restart) falls back to asking Orthanc, and the
plugin's own compressed copy coming back asks nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from imgcloud.edge_app import EdgeApp
from imgcloud.forward_queue import ForwardQueue
from imgcloud.orthanc_ids import InstanceIds

from tests.unit.test_edge_deferred_replace import make_app

TAGS = {
    "PatientID": "P1",
    "StudyInstanceUID": "1.2.3",
    "SeriesInstanceUID": "1.2.3.4",
    "SOPInstanceUID": "1.2.3.4.5",
}
_IDS = InstanceIds.from_tags(TAGS)
assert _IDS is not None
IDS: InstanceIds = _IDS


class Edge:
    """The edge's Orthanc as far as intake touches it: reads and replaces recorded."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.encoded: list[bytes] = []
        self.replaced: list[bytes] = []
        self.asked: list[str] = []
        self.done = threading.Event()

    def read(self, instance_id: str) -> bytes:
        self.reads.append(instance_id)
        return b"RAW-read-back"

    def compressed(self, dicom: bytes) -> bytes:
        self.encoded.append(dicom)
        return b"JLS-" + dicom

    def replace(self, dicom: bytes) -> None:
        self.replaced.append(dicom)
        self.done.set()

    def study_of(self, instance_id: str) -> str:
        self.asked.append(instance_id)
        return "study-from-rest"


@pytest.fixture
def wired(tmp_path: Path, monkeypatch) -> Iterator[tuple[EdgeApp, Edge]]:
    app = make_app(tmp_path)
    edge = Edge()
    monkeypatch.setattr(app.in_place, "_read", edge.read)
    monkeypatch.setattr(app.in_place, "_replace", edge.replace)
    monkeypatch.setattr(app.in_place, "_compressed", edge.compressed)
    yield app, edge
    app.stop(join_s=1)


def state(app: EdgeApp, study_id: str) -> str | None:
    status = app.queue.status(study_id)
    return status.state if status else None


def test_a_c_stored_instance_needs_no_rest_call(wired: tuple[EdgeApp, Edge]) -> None:
    app, edge = wired
    app.expect(TAGS, 9, lambda: b"RAW-c-store")
    app.instance_arrived(IDS.instance, edge.study_of)
    assert edge.done.wait(10)
    assert edge.asked == []  # the study came from the filter's tags
    assert state(app, IDS.study) == "queued"
    assert edge.reads == []  # compressed from the bytes the filter saw, not read back
    assert edge.encoded == [b"RAW-c-store"]
    assert edge.replaced == [b"JLS-RAW-c-store"]
    assert len(app.arrivals) == 0 and app.arrivals.held_bytes == 0


def test_an_instance_the_filter_did_not_see_asks_orthanc(wired: tuple[EdgeApp, Edge]) -> None:
    app, edge = wired
    app.instance_arrived("uploaded-over-rest", edge.study_of)
    assert edge.done.wait(10)
    assert edge.asked == ["uploaded-over-rest"]
    assert state(app, "study-from-rest") == "queued"
    assert edge.reads == ["uploaded-over-rest"]  # read back to compress
    assert edge.encoded == [b"RAW-read-back"]


def test_after_a_restart_the_empty_map_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """The filter saw the instance, then Orthanc restarted before its NEW_INSTANCE was
    handled: the new process's map is empty, and the study is still queued (asked)."""
    first = make_app(tmp_path)
    first.expect(TAGS, 9, lambda: b"RAW-c-store")
    first.stop(join_s=1)
    app = make_app(tmp_path)
    edge = Edge()
    monkeypatch.setattr(app.in_place, "_read", edge.read)
    monkeypatch.setattr(app.in_place, "_replace", edge.replace)
    monkeypatch.setattr(app.in_place, "_compressed", edge.compressed)
    try:
        app.instance_arrived(IDS.instance, lambda _iid: IDS.study)
        assert edge.done.wait(10)
        assert state(app, IDS.study) == "queued"
        assert edge.reads == [IDS.instance]
    finally:
        app.stop(join_s=1)


def test_our_own_compressed_copy_coming_back_asks_nothing(wired: tuple[EdgeApp, Edge]) -> None:
    app, edge = wired
    app.in_place._own.add("replaced-by-us")
    app.instance_arrived("replaced-by-us", edge.study_of)
    assert edge.asked == []
    assert app.queue.counters()["queue_depth"] == 0


def test_a_discarded_duplicate_is_not_expected(wired: tuple[EdgeApp, Edge]) -> None:
    """The glue calls expect only for status 0; an instance without its UIDs is never
    expected (Orthanc refuses it)."""
    app, _edge = wired
    app.expect(TAGS | {"SOPInstanceUID": ""}, 9, lambda: pytest.fail("copied a refused file"))
    assert len(app.arrivals) == 0


def test_received_bytes_waiting_for_a_thread_are_bounded(wired: tuple[EdgeApp, Edge]) -> None:
    """Over the compressor's budget, an arrival is read back instead of held."""
    app, edge = wired
    app.in_place.received_bytes = 10
    gate = threading.Event()

    def slow(dicom: bytes) -> bytes:
        gate.wait(10)
        return edge.compressed(dicom)

    app.in_place._compressed = slow  # type: ignore[method-assign]
    app.in_place.arrived("a", b"R" * 8)
    app.in_place.arrived("b", b"S" * 8)  # 16 > 10 held at once: b is read back
    assert app.in_place._received == 8
    gate.set()
    assert app.in_place.read("a") == b"JLS-" + b"R" * 8
    assert app.in_place.read("b") == b"JLS-RAW-read-back"
    assert "b" in edge.reads and "a" not in edge.reads
    assert app.in_place._received == 0


def test_forwarding_reads_what_was_just_stored_without_reading_it_back(
    wired: tuple[EdgeApp, Edge],
) -> None:
    """Replaced at once (the default), the local copy just stored is what forwarding hashes
    and sends: kept for its read (once), so a study streaming to central while the modality
    sends is not read back from Orthanc."""
    app, edge = wired
    app.expect(TAGS, 9, lambda: b"RAW-c-store")
    app.instance_arrived(IDS.instance, edge.study_of)
    assert edge.done.wait(10)
    assert app.read_for_forwarding(IDS.instance) == b"JLS-RAW-c-store" == edge.replaced[0]
    assert edge.reads == []
    assert app.in_place._recent_total == 0  # read once: not kept any longer
    # a later read (a resend, a retry after an outage) reads the local copy back
    app.read_for_forwarding(IDS.instance)
    assert edge.reads == [IDS.instance]


def test_a_new_copy_drops_what_was_kept_of_the_old_one(wired: tuple[EdgeApp, Edge]) -> None:
    app, edge = wired
    app.in_place.arrived("a", b"RAW-first")
    assert edge.done.wait(10)
    assert app.in_place._recent_total == len(b"JLS-RAW-first")
    assert app.in_place.arrived("a") is False  # our own copy's NEW_INSTANCE: kept still
    assert app.in_place._recent_total == len(b"JLS-RAW-first")
    gate = threading.Event()
    app.in_place._read = lambda _iid: gate.wait(10) and b"RAW-second"  # type: ignore[method-assign,assignment,return-value]
    assert app.in_place.arrived("a") is True  # a REST upload over it, being compressed
    assert app.in_place._recent_total == 0  # the old copy's bytes are gone
    gate.set()
    assert app.read_for_forwarding("a") == b"JLS-RAW-second"


def test_what_is_kept_for_forwarding_is_bounded(wired: tuple[EdgeApp, Edge]) -> None:
    app, edge = wired
    app.in_place.recent_bytes = 40
    for name in ("a", "b", "c"):
        edge.done.clear()
        app.in_place.arrived(name, b"RAW-" + name.encode() * 12)  # 20 bytes compressed
        assert edge.done.wait(10)
    assert app.in_place._recent_total <= 40
    assert list(app.in_place._recent) == ["b", "c"]  # the oldest went first
    assert app.read_for_forwarding("a") == b"JLS-RAW-read-back"  # read back
    assert edge.reads == ["a"]


def test_each_arrival_of_a_queued_study_writes_nothing(tmp_path: Path) -> None:
    """Every arriving instance enqueues its study: once queued and due (or being sent and
    marked to go again), a further arrival changes no row, so no synced commit."""
    queue = ForwardQueue(tmp_path / "queue.sqlite")

    def writes() -> int:
        return queue._db.total_changes

    queue.enqueue("s")
    before = writes()
    queue.enqueue("s")
    assert writes() == before
    queue.mark_sending("s")
    queue.enqueue("s")  # arrived while sending: marked to go again
    before = writes()
    queue.enqueue("s")
    assert writes() == before
    queue.mark_delivered("s", 3, 100)
    status = queue.status("s")
    assert status is not None and status.state == "queued"  # dirty: goes again at once
    queue.mark_delivered("s", 3, 0)
    queue.enqueue("s")  # delivered, then a new instance: queued again
    status = queue.status("s")
    assert status is not None and status.state == "queued"
    queue.mark_failed("s", "central down")
    queue.enqueue("s")  # failed: queued, its backoff kept
    status = queue.status("s")
    assert status is not None and status.state == "queued"
    assert queue.next_due() is None  # still backing off
