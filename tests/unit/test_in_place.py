"""Background compression of arriving instances, and forwarding reading through it."""

from __future__ import annotations

import threading

import pytest
from imgcloud.errors import CompressorUnavailable
from imgcloud.in_place import InPlaceCompressor


class FakeEdge:
    """The edge's Orthanc as a dict; `encode` counts calls and can be held or fail."""

    def __init__(self) -> None:
        self.files = {"a": b"RAW-a", "b": b"RAW-b"}
        self.encodes: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.replacing = threading.Event()

    def read(self, instance_id: str) -> bytes:
        return self.files[instance_id]

    def replace(self, dicom: bytes) -> None:
        self.replacing.set()
        self.files[dicom.decode().split("-")[1]] = dicom

    def compressed(self, dicom: bytes) -> bytes | None:
        if not dicom.startswith(b"RAW"):
            return None  # already compressed
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.encodes.append(dicom)
        return b"JLS-" + dicom.split(b"-")[1]


@pytest.fixture
def edge() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def compressor(edge: FakeEdge):
    c = InPlaceCompressor(edge.read, edge.replace, edge.compressed, threads=2)
    yield c
    c.close()


def test_an_arrival_is_compressed_in_place_and_forwarding_gets_those_bytes(
    edge: FakeEdge, compressor: InPlaceCompressor
) -> None:
    assert compressor.arrived("a") is True
    assert edge.replacing.wait(10)
    assert compressor.read("a") == b"JLS-a"
    assert edge.files["a"] == b"JLS-a"  # the local copy is the compressed one
    assert edge.encodes == [b"RAW-a"]  # once
    # the replacement's own NEW_INSTANCE is not an arrival; a later real one is
    assert compressor.arrived("a") is False
    assert compressor.arrived("a") is True


def test_forwarding_waits_for_a_compression_in_flight_instead_of_encoding_twice(
    edge: FakeEdge, compressor: InPlaceCompressor
) -> None:
    edge.gate.clear()
    compressor.arrived("b")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(compressor.read("b")))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # waiting for the background encode
    edge.gate.set()
    reader.join(10)
    assert got == [b"JLS-b"]
    assert edge.encodes == [b"RAW-b"]


def test_an_instance_never_seen_arriving_is_compressed_on_its_read(
    edge: FakeEdge, compressor: InPlaceCompressor
) -> None:
    assert compressor.read("a") == b"JLS-a"
    assert edge.files["a"] == b"JLS-a"


def test_what_is_kept_as_received_is_read_and_sent_as_it_is(
    edge: FakeEdge, compressor: InPlaceCompressor
) -> None:
    edge.files["a"] = b"LOSSY-a"
    assert compressor.read("a") == b"LOSSY-a"
    assert not edge.replacing.is_set()


def test_a_failed_background_compression_fails_the_forwarding_read_too(
    edge: FakeEdge, compressor: InPlaceCompressor
) -> None:
    edge.fail = CompressorUnavailable("encoders could not start")
    edge.gate.clear()
    compressor.arrived("a")
    edge.gate.set()
    with pytest.raises(CompressorUnavailable):
        compressor.read("a")
    assert edge.files["a"] == b"RAW-a"  # the received copy is untouched
    edge.fail = None
    assert compressor.read("a") == b"JLS-a"  # the retry compresses


def test_a_failed_replace_does_not_hide_the_next_arrival(edge: FakeEdge) -> None:
    def broken(_dicom: bytes) -> None:
        raise OSError("disk full")

    compressor = InPlaceCompressor(edge.read, broken, edge.compressed, threads=1)
    try:
        with pytest.raises(OSError, match="disk full"):
            compressor.read("a")
        assert compressor.arrived("a") is True
    finally:
        compressor.close()
