"""The edge's fleet agent against a small real HTTP server standing in for central's
fleet API (the contract's routes): the heartbeat holds what the contract lists and no
study or patient data, a rules change central holds is in force within a poll, an
invalid one is refused with its reason and the last good one stays."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from imgcloud.edge_rules import RulesStore
from imgcloud.fleet_agent import (
    ErrorCounter,
    FleetAgent,
    FleetClient,
    RulesPoller,
    failure_kind,
)
from imgcloud.forward_queue import ForwardQueue
from imgcloud.upgrade import ReleaseStore

HEARTBEAT_FIELDS = {
    "software_version", "orthanc_version", "plugins", "uptime_s", "queue_depth",
    "oldest_undelivered_age_s", "failing_deliveries", "failure_reasons", "last_delivery_at",
    "disk_free_bytes", "cert_expiry", "error_counts", "rules_version", "release",
}  # fmt: skip


class FakeCentral:
    """Central's edge-facing fleet routes, in memory, over real HTTP on loopback."""

    def __init__(self) -> None:
        self.heartbeats: list[dict[str, Any]] = []
        self.rules_reports: list[dict[str, Any]] = []
        self.upgrade_reports: list[dict[str, Any]] = []
        self.rules: dict[str, Any] | None = None  # {"version", "document"}
        self.order: dict[str, Any] | None = None
        self.long_poll = False  # what the heartbeat answer tells edges (rules_long_poll)
        self.polls: list[tuple[int, int]] = []  # (have, wait) of every rules request
        self.bundles: dict[str, bytes] = {}
        self.changed = threading.Condition()
        central = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/api/v1/fleet/rules":
                    have, wait = int(query["have"][0]), int(query["wait"][0])
                    central.polls.append((have, wait))
                    with central.changed:
                        central.changed.wait_for(
                            lambda: central.rules is not None and central.rules["version"] > have,
                            timeout=wait,
                        )
                        rules = central.rules
                    if rules is not None and rules["version"] > have:
                        return self.answer(200, rules)
                    return self.answer(204)
                if url.path == "/api/v1/fleet/upgrade":
                    return self.answer(200, central.order) if central.order else self.answer(204)
                if url.path.startswith("/api/v1/fleet/releases/"):
                    data = central.bundles[url.path.split("/")[5]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                return self.answer(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if self.path == "/api/v1/fleet/heartbeat":
                    unknown = set(body) - HEARTBEAT_FIELDS
                    if unknown:
                        return self.answer(422, {"unknown": sorted(unknown)})
                    central.heartbeats.append(body)
                    version = central.rules["version"] if central.rules else None
                    upgrade = {"release": central.order["release"]} if central.order else None
                    answer = {"rules_version": version, "upgrade": upgrade, "interval_s": 30}
                    return self.answer(200, {**answer, "rules_long_poll": central.long_poll})
                if self.path == "/api/v1/fleet/rules/report":
                    central.rules_reports.append(body)
                    return self.answer(204)
                if self.path == "/api/v1/fleet/upgrade/report":
                    if body["release"] == "unknown-to-central":
                        return self.answer(404, {"detail": "no such upgrade"})
                    central.upgrade_reports.append(body)
                    return self.answer(204)
                return self.answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def publish(self, version: int, document: dict[str, Any]) -> None:
        with self.changed:
            self.rules = {"version": version, "document": {**document, "version": version}}
            self.changed.notify_all()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def central() -> Iterator[FakeCentral]:
    server = FakeCentral()
    yield server
    server.close()


def versions() -> dict[str, Any]:
    return {
        "software_version": "2026.12.0",
        "orthanc_version": "1.12.7",
        "plugins": {"python": "5.0", "imaging-cloud": "0.1.0"},
    }


def agent(tmp_path: Path, central: FakeCentral | str, **kw: Any) -> FleetAgent:
    queue = ForwardQueue(tmp_path / "queue.sqlite")
    rules = RulesStore(tmp_path / "rules.json")
    return FleetAgent(
        FleetClient(central if isinstance(central, str) else central.api_url, None, timeout_s=1),
        versions=versions,
        queue=queue,
        rules=rules,
        storage_dir=tmp_path,
        certificates=kw.pop("certificates", {}),
        errors=kw.pop("errors", ErrorCounter()),
        **kw,
    )


def test_the_heartbeat_holds_the_contract_fields_and_no_study_data(
    tmp_path: Path, central: FakeCentral
) -> None:
    errors = ErrorCounter()
    logger = logging.getLogger("imgcloud.forwarding")
    logger.addHandler(errors)
    try:
        fleet = agent(tmp_path, central, errors=errors)
        fleet.queue.enqueue("study-delivered")
        fleet.queue.mark_delivered("study-delivered", 3, 300)
        fleet.queue.enqueue("1.2.840.99.STUDY-FAILING")
        fleet.queue.mark_failed(
            "1.2.840.99.STUDY-FAILING", "central did not answer (instance 1.2.840.99.7): Timeout"
        )
        fleet.queue.enqueue("study-queued")
        logger.warning("study %s failed for DOE^JOHN", "1.2.840.99")
        assert fleet.work() is False
    finally:
        logger.removeHandler(errors)
    (beat,) = central.heartbeats
    assert set(beat) == HEARTBEAT_FIELDS
    assert beat["queue_depth"] == 2 and beat["failing_deliveries"] == 1
    assert beat["failure_reasons"] == {"central-unreachable": 1}
    assert beat["error_counts"] == {"forwarding": 1}
    assert beat["oldest_undelivered_age_s"] >= 0 and beat["last_delivery_at"].endswith("Z")
    assert beat["disk_free_bytes"] > 0 and beat["rules_version"] == 0
    text = json.dumps(beat)
    assert "1.2.840.99" not in text and "DOE" not in text and "study-" not in text
    assert fleet.last_ok is not None and fleet.central_took_a_heartbeat() is None
    fleet.work()  # counts are "since the last heartbeat"
    assert central.heartbeats[1]["error_counts"] == {}


def test_a_heartbeat_central_did_not_take_keeps_its_counts(tmp_path: Path) -> None:
    errors = ErrorCounter()
    errors.emit(logging.LogRecord("imgcloud.delivery", logging.ERROR, "", 0, "x", None, None))
    fleet = agent(tmp_path, "http://127.0.0.1:9/api", errors=errors)  # nothing listens
    with pytest.raises(Exception, match="did not answer"):
        fleet.work()
    assert errors.take() == {"delivery": 1}
    assert fleet.central_took_a_heartbeat() is not None
    fleet.failures = 1  # as the loop counts it: the next try comes soon, not an interval later
    assert fleet.pause_s() == 2.0 and fleet.every_s == 30.0


def test_certificate_expiry_is_reported_by_name(tmp_path: Path, central: FakeCentral) -> None:
    from deploy.stack.pki import ensure_pki  # the stack's own CA builder

    pki = ensure_pki(tmp_path / "pki")
    fleet = agent(tmp_path, central, certificates={"ca": pki["ca_cert"], "gone": tmp_path / "x"})
    fleet.work()
    (beat,) = central.heartbeats
    assert list(beat["cert_expiry"]) == ["ca"] and beat["cert_expiry"]["ca"] > "2027"


def test_failure_reasons_are_kinds_never_text() -> None:
    assert failure_kind("central refused (the instance): HTTP 413 too big") == "central-http-413"
    assert failure_kind("instance 1.2.3 not confirmed by SHA-256") == "not-confirmed"
    assert failure_kind("DOE^JOHN something") == "other"


def test_queued_upgrade_reports_go_with_the_heartbeat(tmp_path: Path, central: FakeCentral) -> None:
    store = ReleaseStore(tmp_path / "releases")
    state = store.load()
    store.report(state, "2026.12.1", "rolled_back", "not healthy")
    store.save(state)
    agent(tmp_path, central, releases=store).work()
    assert central.upgrade_reports == [
        {"release": "2026.12.1", "status": "rolled_back", "detail": "not healthy"}
    ]
    assert store.take_reports() == []


def test_a_report_central_will_never_take_does_not_hold_the_others_back(
    tmp_path: Path, central: FakeCentral
) -> None:
    store = ReleaseStore(tmp_path / "releases")
    state = store.load()
    store.report(state, "unknown-to-central", "refused", "tampered at rest")
    store.report(state, "2026.12.1", "healthy")
    store.save(state)
    agent(tmp_path, central, releases=store).work()
    assert [r["release"] for r in central.upgrade_reports] == ["2026.12.1"]
    assert store.take_reports() == []


def poller(
    tmp_path: Path, central: FakeCentral, wait_s: int = 2, long_poll: bool = True
) -> RulesPoller:
    rules = RulesStore(tmp_path / "rules.json", known_modalities={"HOSP_PACS"})
    rules.known_modalities = {"HOSP_PACS"}
    polling = RulesPoller(FleetClient(central.api_url, None), rules, wait_s=wait_s)
    polling.on_heartbeat({"rules_long_poll": long_poll, "rules_version": None})
    return polling


def until(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_rules_change_is_in_force_while_the_poll_waits(
    tmp_path: Path, central: FakeCentral
) -> None:
    rules = poller(tmp_path, central, wait_s=3)
    rules.start()
    try:
        time.sleep(0.3)  # the poll is waiting at central
        published = time.monotonic()
        central.publish(4, {"compression": "keep", "bandwidth_limit_mbps": 20})
        assert until(lambda: rules.rules.current.version == 4)
        took = time.monotonic() - published
        assert took < 1.0, took  # long poll: not the next interval
        assert rules.rules.current.compression == "keep"
        assert until(
            lambda: central.rules_reports == [{"version": 4, "status": "applied", "reason": ""}]
        )
        assert json.loads((tmp_path / "rules.json").read_text())["version"] == 4  # persisted
    finally:
        assert rules.stop(join_s=6)


def test_an_invalid_document_is_refused_with_its_reason_and_the_last_good_stays(
    tmp_path: Path, central: FakeCentral
) -> None:
    rules = poller(tmp_path, central, wait_s=1)
    central.publish(2, {"compression": "jpeg-lossless"})
    assert rules.work() is True and rules.rules.current.version == 2
    central.publish(
        3, {"pacs_pulls": [{"name": "p", "source_aet": "OTHER_PACS", "every_minutes": 5}]}
    )
    assert rules.work() is False  # refused: not asked again at once, at the next heartbeat
    assert rules.rules.current.version == 2 and rules.rules.current.compression == "jpeg-lossless"
    refused = central.rules_reports[-1]
    assert (refused["version"], refused["status"]) == (3, "refused")
    assert "OTHER_PACS" in refused["reason"]
    # the refused version is not asked for again: the next poll waits for a newer one
    started = time.monotonic()
    assert rules.work() is True and time.monotonic() - started >= 0.9
    assert len(central.rules_reports) == 2
    central.publish(5, {"compression": "keep"})
    rules.work()
    assert rules.rules.current.version == 5


def test_by_default_rules_are_fetched_only_when_a_heartbeat_names_a_newer_version(
    tmp_path: Path, central: FakeCentral
) -> None:
    beat = agent(tmp_path / "a", central)
    rules = poller(tmp_path, central, wait_s=3, long_poll=False)
    beat.rules_poller = rules
    # before any heartbeat answered: one request without waiting, nothing newer
    rules.offered = None
    assert rules.work() is False and central.polls == [(0, 0)]
    assert beat.work() is False  # the answer names no version: nothing is fetched
    assert rules.work() is False and central.polls == [(0, 0)]
    central.publish(3, {"compression": "keep"})
    assert beat.work() is False  # the answer names version 3, above ours
    assert rules.work() is True and rules.rules.current.version == 3
    assert central.polls[-1] == (0, 0)  # fetched at once, never a waiting request
    assert rules.work() is False and len(central.polls) == 2  # in force: no more asking
    assert central.rules_reports == [{"version": 3, "status": "applied", "reason": ""}]


def test_the_heartbeat_wakes_the_poller_and_central_may_ask_for_a_long_poll(
    tmp_path: Path, central: FakeCentral
) -> None:
    beat = agent(tmp_path / "a", central)
    rules = poller(tmp_path, central, wait_s=3, long_poll=False)
    beat.rules_poller = rules
    rules.start()
    try:
        central.publish(2, {"compression": "keep"})
        beat.work()  # the heartbeat thread's round: its answer names version 2
        assert until(lambda: rules.rules.current.version == 2)
        central.long_poll = True
        beat.work()  # now central asks for a long poll: it is waiting at once
        assert until(lambda: central.polls and central.polls[-1] == (2, 3))
        published = time.monotonic()
        central.publish(5, {"compression": "jpeg-lossless"})
        assert until(lambda: rules.rules.current.version == 5)
        assert time.monotonic() - published < 1.0  # answered by the waiting poll
    finally:
        assert rules.stop(join_s=6)


def test_a_misbehaving_central_cannot_make_the_poller_spin_or_stick(
    tmp_path: Path, central: FakeCentral
) -> None:
    """Review findings M2, M3, L1, L2 of the rules poller."""
    now = [1000.0]
    rules = poller(tmp_path, central, wait_s=3, long_poll=False)
    rules.clock = lambda: now[0]
    # a heartbeat names a version /rules then refuses to give: one fetch, then waits
    rules.on_heartbeat({"rules_version": 10, "rules_long_poll": False})
    central.publish(2, {"pacs_pulls": [{"name": "p", "source_aet": "NOPE", "every_minutes": 5}]})
    # each round ends the loop's run (False: it sleeps until the next heartbeat or the
    # timer), so a central that names a version it will not give costs a request a beat
    assert rules.work() is False and len(central.polls) == 1
    assert rules.work() is False and len(central.polls) == 2
    assert central.rules_reports[-1]["status"] == "refused"
    # a version beyond the contract's range never becomes "refused" (it would stick)
    rules.on_heartbeat({"rules_version": 2**40, "rules_long_poll": False})
    assert rules.offered == 2 and rules.have() == 2  # ignored; central had nothing above 2
    # with heartbeats lost, the timer round still asks central (every `every_s`)
    now[0] += rules.every_s
    central.publish(4, {"compression": "keep"})
    assert rules.work() is True and rules.rules.current.version == 4
    # a long poll answered 204 at once (wait capped to 0) does not poll again at once
    rules.long_poll = True
    started = time.monotonic()
    rules.clock = time.monotonic
    central.polls.clear()
    with central.changed:
        central.rules = None  # nothing newer: the fake answers 204 only after `wait`
    rules.wait_s = 0
    assert rules.work() is False and len(central.polls) == 1
    assert time.monotonic() - started < 1.0
