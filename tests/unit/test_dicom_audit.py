"""The edge's DICOM audit outbox (#18, 4): events as the indexer's contract has them, kept
durably with their queries sealed, sent in batches of at most 500, resent after an outage,
and a refused event set aside without holding up the others."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from imgcloud.dicom_audit import BATCH_MAX, AuditOutbox, AuditSender, build_event
from imgcloud.errors import ServiceCallError

NAME = "WANG^XIAOMING"


def sealed_box(tmp_path: Path) -> AuditOutbox:
    """An outbox whose 'seal' reverses the bytes: enough to show nothing is kept in clear."""
    return AuditOutbox(
        tmp_path / "dicom-audit.sqlite", lambda d, _n: d[::-1], lambda d, _n: d[::-1]
    )


def event(**query: str) -> dict[str, Any]:
    return build_event(
        "dicom.c-find",
        calling_ae="HOSP_PACS",
        called_ae="EDGE_H0001",
        source="127.0.0.1",
        level="STUDY",
        query=query or {"PatientName": NAME, "StudyInstanceUID": ""},
        answers=2,
        outcome="ok",
    )


class Indexer:
    """Stands in for POST /api/v1/audit/edge-events: idempotent on event_id."""

    def __init__(self, fail_with: int | None = None, refuse: set[str] | None = None) -> None:
        self.fail_with = fail_with
        self.refuse = refuse or set()
        self.batches: list[int] = []
        self.kept: dict[str, dict[str, Any]] = {}

    def send_edge_events(self, events: list[dict[str, Any]]) -> int:
        assert len(events) <= BATCH_MAX
        if self.fail_with:
            raise ServiceCallError(f"HTTP {self.fail_with}", self.fail_with)
        if any(e["event_id"] in self.refuse for e in events):
            raise ServiceCallError("HTTP 422", 422)
        self.batches.append(len(events))
        for e in events:
            self.kept[e["event_id"]] = e
        return len(events)


def test_an_event_has_the_contracts_fields() -> None:
    at = dt.datetime(2026, 12, 3, 14, 5, 6, 789000, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    built = build_event(
        "dicom.c-move",
        calling_ae=" HOSP_PACS ",
        called_ae="EDGE_H0001",
        source="127.0.0.1",
        level="INSTANCE",
        query={"StudyInstanceUID": "1.2.3", "MoveDestination": "HOSP_PACS"},
        answers=4,
        outcome="failed",
        now=at,
    )
    assert uuid.UUID(built.pop("event_id")).version == 4
    assert built == {
        "at": "2026-12-03T06:05:06.789+00:00",
        "action": "dicom.c-move",
        "calling_ae": "HOSP_PACS",
        "called_ae": "EDGE_H0001",
        "source": "127.0.0.1",
        "level": "IMAGE",
        "query": {"StudyInstanceUID": "1.2.3", "MoveDestination": "HOSP_PACS"},
        "answers": 4,
        "outcome": "failed",
    }
    assert build_event(**{**_args(), "level": "WORKLIST"})["level"] == ""


def _args() -> dict[str, Any]:
    return dict(
        action="dicom.c-find",
        calling_ae="A",
        called_ae="B",
        source="",
        level="",
        query={},
        answers=0,
        outcome="ok",
    )


def test_the_query_is_sealed_on_disk_and_opened_for_sending(tmp_path: Path) -> None:
    box = sealed_box(tmp_path)
    kept = event()
    box.add(kept)
    box.add(kept)  # the same event twice is kept once
    box.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert NAME.encode() not in on_disk
    assert sealed_box(tmp_path).pending() == [kept]  # survives a restart


def test_events_go_in_batches_of_at_most_500_and_leave_the_outbox(tmp_path: Path) -> None:
    box = sealed_box(tmp_path)
    for _ in range(BATCH_MAX + 20):
        box.add(event())
    indexer = Indexer()
    assert AuditSender(box, indexer).run_once() == BATCH_MAX + 20
    assert indexer.batches == [BATCH_MAX, 20]
    assert box.pending() == [] and box.counters() == {"audit_pending": 0, "audit_refused": 0}


@pytest.mark.parametrize("status", [401, 429, 503])
def test_an_outage_keeps_every_event_for_the_next_round(tmp_path: Path, status: int) -> None:
    box = sealed_box(tmp_path)
    events = [event(), event()]
    for e in events:
        box.add(e)
    indexer = Indexer(fail_with=status)
    with pytest.raises(ServiceCallError):
        AuditSender(box, indexer).run_once()
    assert box.counters()["audit_pending"] == 2
    indexer.fail_with = None
    assert AuditSender(box, indexer).run_once() == 2
    assert list(indexer.kept.values()) == events  # in the order they happened


def test_an_event_refused_for_good_is_set_aside_and_the_others_go(tmp_path: Path) -> None:
    box = sealed_box(tmp_path)
    events = [event() for _ in range(5)]
    for e in events:
        box.add(e)
    indexer = Indexer(refuse={events[3]["event_id"]})
    assert AuditSender(box, indexer).run_once() == 4
    assert set(indexer.kept) == {e["event_id"] for e in events} - {events[3]["event_id"]}
    assert box.counters() == {"audit_pending": 0, "audit_refused": 1}
