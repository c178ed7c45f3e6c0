"""The edge's wiring of the deferred replace (imgcloud.edge_app, delivery, plugin_settings):
the C-STORE filter tells the compressor the modality is sending, a resend reads what
forwarding reads (never the received local copy), central's confirmation reaches the
compressor, and a study delivered already is not queued again by the instability that its
own replacements cause."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imgcloud.central_api import CentralApi
from imgcloud.delivery import StudyDelivery, Verification
from imgcloud.edge_app import EdgeApp
from imgcloud.errors import ConfigurationError, ForwardingError
from imgcloud.plugin_settings import EdgeSettings
from imgcloud.storage.archive import EncryptedArchive

from tests.unit.test_edge_app import edge_configuration


def make_app(tmp_path: Path, **section: object) -> EdgeApp:
    settings = EdgeSettings.from_orthanc(edge_configuration(tmp_path, **section))
    archive = EncryptedArchive.from_settings(settings.storage)
    no_orthanc = httpx.MockTransport(lambda request: httpx.Response(503))
    return EdgeApp(settings, archive, "encrypted-filesystem", no_orthanc, lambda d, _ts: d)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    edge = make_app(tmp_path)
    yield edge
    edge.stop(join_s=1)


def test_the_defaults_replace_at_once_and_bound_what_is_kept(app: EdgeApp) -> None:
    assert app.settings.replace_after_idle_s == 0.0  # deferring is a setting, off by default
    assert app.in_place.defer_s == 0.0
    assert app.in_place.keep_bytes == 256 * 1024 * 1024
    assert app.settings.central_keepalive_s == 0.5
    assert app.in_place.replacer in app._background()
    assert app.status()["replaces_pending"] == 0


def test_the_settings_are_read_and_bounded(tmp_path: Path) -> None:
    app = make_app(
        tmp_path, ReplaceAfterIdleSeconds=0, KeepCompressedMB=16, CentralKeepAliveSeconds=5
    )
    try:
        assert (app.in_place.defer_s, app.in_place.keep_bytes) == (0, 16 * 1024 * 1024)
        pool = app.central.client._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == 5
    finally:
        app.stop(join_s=1)
    for bad in ({"ReplaceAfterIdleSeconds": -1}, {"CentralKeepAliveSeconds": 0}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            EdgeSettings.from_orthanc(edge_configuration(tmp_path, **bad))


def test_a_c_store_holds_the_replaces_back(app: EdgeApp, monkeypatch) -> None:
    clock = iter([100.0, 250.0])
    monkeypatch.setattr(app.in_place, "_clock", lambda: next(clock))
    app.cstore_status("1.2.3", lambda _uid: None)
    assert app.in_place._last_cstore == 100.0
    app.cstore_status("1.2.3", lambda _uid: "held")  # a discarded resend counts too
    assert app.in_place._last_cstore == 250.0


def test_a_deferring_edge_resends_what_forwarding_reads(tmp_path: Path, monkeypatch) -> None:
    """Deferred, the local copy may still be the received one: a resend sends the
    compressed bytes (the ones hashed), not the local copy."""
    app = make_app(tmp_path, ReplaceAfterIdleSeconds=2)

    def received(_instance_id: str) -> bytes:
        raise AssertionError("read the local copy as received")

    uploaded: list[bytes] = []
    monkeypatch.setattr(app.local, "read_instance", received)
    monkeypatch.setattr(app.in_place, "read", lambda _instance_id: b"JLS")
    monkeypatch.setattr(app.central, "store", uploaded.append)
    try:
        assert app.send([("i1", None), ("i2", b"HELD")]) == len(b"JLS") + len(b"HELD")
    finally:
        app.stop(join_s=1)
    assert sorted(uploaded) == [b"HELD", b"JLS"]


def test_replacing_at_once_a_resend_reads_the_local_copy(app: EdgeApp, monkeypatch) -> None:
    """By default the local copy was replaced before its hash was taken: a resend sends it
    as it is, never encoded again (a second encoding may differ: the 120 s fallback)."""

    def encoded_again(_instance_id: str) -> bytes:
        raise AssertionError("encoded again")

    uploaded: list[bytes] = []
    monkeypatch.setattr(app.local, "read_instance", lambda _instance_id: b"LOCAL")
    monkeypatch.setattr(app.in_place, "read", encoded_again)
    monkeypatch.setattr(app.central, "store", uploaded.append)
    assert app.send([("i1", None)]) == len(b"LOCAL") and uploaded == [b"LOCAL"]


def test_central_s_confirmation_reaches_the_compressor(app: EdgeApp, monkeypatch) -> None:
    told: list[list[str]] = []
    monkeypatch.setattr(app.delivery, "confirmed", told.append)
    app.delivery.list_instances = lambda _study: [("i1", "1.1")]
    app.delivery.read_instance = lambda _iid: b"JLS"
    app.delivery.verify = lambda hashes: Verification(confirmed=set(hashes))
    assert app.delivery.deliver("s1") == (1, 0)
    assert told == [["i1"]]


def test_a_partly_confirmed_study_tells_what_was_confirmed() -> None:
    told: list[list[str]] = []
    delivery = StudyDelivery(
        list_instances=lambda _s: [("i1", "1.1"), ("i2", "1.2")],
        read_instance=lambda _i: b"one",
        send=lambda _items: 0,
        verify=lambda h: Verification(confirmed={"1.1"}, missing={"1.2"}),
        rounds=1,
        confirmed=told.append,
    )
    with pytest.raises(ForwardingError, match="1 of 2 instances not confirmed"):
        delivery.deliver("study")
    assert told == [["i1"]]


def test_a_delivered_study_made_unstable_by_its_replacements_is_not_queued_again(
    app: EdgeApp,
) -> None:
    app.queue.enqueue("s1")
    app.queue.mark_sending("s1")
    app.queue.mark_delivered("s1", 3, 100, complete=True)
    app.study_stable("s1")  # Orthanc's STABLE_STUDY after the replaces
    status = app.queue.status("s1")
    assert status is not None and status.state == "delivered"
    app.queue.enqueue("s2")
    app.queue.mark_sending("s2")
    app.queue.mark_delivered("s2", 3, 100, complete=False)  # partial: stable makes it whole
    app.study_stable("s2")
    status = app.queue.status("s2")
    assert status is not None and status.state == "queued"


def test_central_keeps_idle_connections_as_long_as_it_is_told() -> None:
    api = CentralApi("http://central", None, keepalive_s=4.0)
    try:
        assert api.client._transport._pool._keepalive_expiry == 4.0  # type: ignore[attr-defined]
    finally:
        api.close()
