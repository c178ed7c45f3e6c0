"""The deferred replace (imgcloud.in_place with defer_s > 0): forwarding sends the compressed
bytes kept in memory while the local copy stays as received, until the edge has been idle
of C-STOREs; then the local copy is replaced by exactly the bytes forwarded."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
from imgcloud.errors import CompressorUnavailable, LocalOrthancError
from imgcloud.in_place import BUSY_S, HOLD_S, InPlaceCompressor

from tests.unit.test_in_place import FakeEdge

DEFER_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Deferred:
    """A compressor over a FakeEdge, on a clock the test moves."""

    def __init__(self, edge: FakeEdge, keep_bytes: int = 1 << 20) -> None:
        self.edge = edge
        self.clock = Clock()
        self.gone: set[str] = set()
        self.replaced: list[bytes] = []
        self.c = InPlaceCompressor(
            edge.read,
            self.replace,
            edge.compressed,
            threads=2,
            defer_s=DEFER_S,
            keep_bytes=keep_bytes,
            exists=lambda instance_id: instance_id not in self.gone,
            clock=self.clock,
        )

    def replace(self, dicom: bytes) -> None:
        self.replaced.append(dicom)
        self.edge.replace(dicom)

    def arrive(self, instance_id: str) -> None:
        """A C-STORE passes the filter, Orthanc stores it, its NEW_INSTANCE comes, and the
        background compression ends."""
        self.c.cstore()
        assert self.c.arrived(instance_id) is True
        assert self.c.read(instance_id)  # waits for the background compression

    def replace_all(self) -> int:
        count = 0
        while self.c.replace_one():
            count += 1
        return count


@pytest.fixture
def edge() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def d() -> Iterator[Deferred]:
    deferred = Deferred(FakeEdge())
    yield deferred
    deferred.c.close()


def test_forwarding_gets_the_kept_bytes_while_the_local_copy_stays_as_received(
    d: Deferred,
) -> None:
    d.arrive("a")
    assert d.edge.files["a"] == b"RAW-a"  # not replaced while the modality may be sending
    assert d.c.read("a") == b"JLS-a"  # what forwarding hashes and sends: compressed
    assert d.edge.encodes == [b"RAW-a"]  # once: the kept bytes, not a second encode
    assert d.c.pending() == 1


def test_the_local_copy_is_replaced_once_idle_and_confirmed_with_the_bytes_forwarded(
    d: Deferred,
) -> None:
    d.arrive("a")
    d.arrive("b")
    forwarded = {i: hashlib.sha256(d.c.read(i)).hexdigest() for i in ("a", "b")}
    d.c.confirmed(["a", "b"])
    d.clock.now += DEFER_S - 0.1
    d.c.cstore()  # another C-STORE: still sending
    d.clock.now += DEFER_S - 0.1
    assert d.replace_all() == 0
    assert d.edge.files["a"] == b"RAW-a"
    d.clock.now += 0.2  # DEFER_S without a C-STORE
    assert d.replace_all() == 2
    assert {i: hashlib.sha256(d.edge.files[i]).hexdigest() for i in ("a", "b")} == forwarded
    assert d.c.pending() == 0
    # the replacements' own NEW_INSTANCE is not an arrival; a later real one is
    assert d.c.arrived("a") is False
    assert d.c.arrived("b") is False
    assert d.c.arrived("a") is True


def test_an_idle_edge_waits_for_forwarding_to_confirm_or_hold_s(d: Deferred) -> None:
    """So a drain does not share the edge with the replaces; forwarding off (an outage,
    a window) still gets the local copy compressed after HOLD_S."""
    d.arrive("a")
    d.clock.now += DEFER_S + 1
    assert d.replace_all() == 0
    d.clock.now += HOLD_S
    assert d.replace_all() == 1
    assert d.edge.files["a"] == b"JLS-a"


def test_over_the_budget_forwarding_compresses_again_and_the_replace_does_not_wait(
    edge: FakeEdge,
) -> None:
    d = Deferred(edge, keep_bytes=len(b"JLS-a"))  # room for one
    try:
        d.arrive("a")
        d.arrive("b")
        assert d.c.read("b") == b"JLS-b"  # not kept: encoded again, the same bytes
        assert edge.encodes.count(b"RAW-b") == 2
        assert edge.encodes.count(b"RAW-a") == 1
        d.clock.now += DEFER_S
        assert d.replace_all() == 1  # b: nothing kept, nothing to wait for
        assert (edge.files["a"], edge.files["b"]) == (b"RAW-a", b"JLS-b")
    finally:
        d.c.close()


def test_a_crash_before_the_replace_loses_nothing_and_the_next_read_hashes_the_same(
    d: Deferred,
) -> None:
    d.arrive("a")
    sent = d.c.read("a")
    d.c.close()  # SIGKILL: the kept bytes and the pending list are gone
    assert d.edge.files["a"] == b"RAW-a"  # the received copy, whole
    again = Deferred(d.edge)
    try:
        assert hashlib.sha256(again.c.read("a")).digest() == hashlib.sha256(sent).digest()
    finally:
        again.c.close()


def test_an_edge_that_never_falls_idle_replaces_what_has_waited_busy_s(d: Deferred) -> None:
    d.arrive("a")
    d.c.confirmed(["a"])
    for _ in range(3):
        d.clock.now += BUSY_S / 3
        d.c.cstore()
    assert d.replace_all() == 1
    assert d.edge.files["a"] == b"JLS-a"


def test_a_new_copy_stored_over_rest_drops_what_was_kept(d: Deferred) -> None:
    d.arrive("a")
    d.edge.files["a"] = b"RAW-a2"  # an upload with Orthanc's credentials (not filtered)
    d.arrive("a")
    assert d.c.read("a") == b"JLS-a2"
    d.c.confirmed(["a"])
    d.clock.now += DEFER_S
    assert d.replace_all() == 1
    assert d.replaced == [b"JLS-a2"]


def test_an_instance_deleted_meanwhile_is_not_stored_again(d: Deferred) -> None:
    d.arrive("a")
    d.gone.add("a")
    d.c.confirmed(["a"])
    d.clock.now += DEFER_S
    assert d.replace_all() == 1
    assert d.replaced == [] and d.c.pending() == 0


def test_a_failed_replace_keeps_the_received_copy(d: Deferred) -> None:
    d.arrive("a")
    d.c.confirmed(["a"])

    def broken(_dicom: bytes) -> None:
        raise LocalOrthancError("the compressed copy was not stored (Orthanc: Failure)")

    d.c._replace = broken
    d.clock.now += DEFER_S
    assert d.replace_all() == 1
    assert d.edge.files["a"] == b"RAW-a" and d.c.pending() == 0
    assert d.c.arrived("a") is True  # not mistaken for our own replacement


def test_encoders_down_at_the_replace_keep_it_pending(edge: FakeEdge) -> None:
    d = Deferred(edge, keep_bytes=0)  # nothing kept: the replace encodes again
    try:
        d.arrive("a")
        edge.fail = CompressorUnavailable("encoders could not start")
        d.clock.now += DEFER_S
        with pytest.raises(CompressorUnavailable):
            d.c.replace_one()
        assert d.c.pending() == 1 and edge.files["a"] == b"RAW-a"
        edge.fail = None
        assert d.replace_all() == 1 and edge.files["a"] == b"JLS-a"
    finally:
        d.c.close()


def test_the_replacer_loop_replaces_once_the_edge_is_idle(edge: FakeEdge) -> None:
    c = InPlaceCompressor(edge.read, edge.replace, edge.compressed, threads=1, defer_s=0.2)
    c.replacer.every_s = 0.02
    c.replacer.start()
    try:
        c.cstore()
        c.arrived("a")
        assert c.read("a") == b"JLS-a"
        c.confirmed(["a"])
        assert edge.files["a"] == b"RAW-a"
        deadline = time.monotonic() + 10
        while edge.files["a"] != b"JLS-a" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert edge.files["a"] == b"JLS-a"
    finally:
        c.replacer.stop()
        c.close()


def test_a_read_while_the_replace_runs_gets_the_same_bytes(d: Deferred) -> None:
    d.arrive("a")
    d.c.confirmed(["a"])
    d.clock.now += DEFER_S
    inside = threading.Event()
    release = threading.Event()
    seen: list[bytes] = []

    def slow(dicom: bytes) -> None:
        inside.set()
        release.wait(10)
        d.edge.replace(dicom)

    d.c._replace = slow
    worker = threading.Thread(target=d.c.replace_one)
    worker.start()
    assert inside.wait(10)
    seen.append(d.c.read("a"))
    release.set()
    worker.join(10)
    seen.append(d.c.read("a"))  # now the local copy, replaced
    assert seen == [b"JLS-a", b"JLS-a"]
