"""The edge's record sender: one record the indexer will never take (a study of another
hospital that came here by a push: 409) must not hold up the records behind it; an outage
(5xx, no answer) stops the round and is retried."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from imgcloud.errors import ServiceCallError
from imgcloud.indexer_client import RecordSender
from imgcloud.study_records import RecordStore, StudyRecord


class Indexer:
    """Stands in for the indexer's arrivals route: answers by study UID."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.accepted: list[str] = []

    def report_arrival(self, institution: str, arrival: dict[str, Any]) -> dict[str, Any]:
        status = self.answers.get(arrival["study_instance_uid"], 200)
        if status != 200:
            raise ServiceCallError(f"HTTP {status}", status)
        self.accepted.append(arrival["study_instance_uid"])
        return {}


def store_with(tmp_path: Path, uids: list[str]) -> RecordStore:
    clock = iter(range(1, 1000))
    store = RecordStore(
        tmp_path / "records.sqlite",
        lambda data, _uid: data,
        lambda data, _uid: data,
        clock=lambda: float(next(clock)),
    )
    for uid in uids:
        store.save(f"id-{uid}", StudyRecord({"study_instance_uid": uid}, {}))
    return store


def test_a_refused_record_is_set_aside_and_the_others_go(tmp_path: Path) -> None:
    store = store_with(tmp_path, ["1.1", "1.2", "1.3"])
    indexer = Indexer({"1.1": 409})
    sender = RecordSender(store, indexer, "H0002")  # type: ignore[arg-type]
    assert sender.run_once() == 2
    assert indexer.accepted == ["1.2", "1.3"]
    assert store.pending_public() == []  # 1.1 is not retried for ever
    assert store.get("id-1.1")["state"] == "refused"  # type: ignore[index]
    # the study changes (more series): it is offered again
    store.save("id-1.1", StudyRecord({"study_instance_uid": "1.1"}, {}))
    indexer.answers = {}
    assert sender.run_once() == 1


def test_an_outage_stops_the_round_and_keeps_every_record(tmp_path: Path) -> None:
    store = store_with(tmp_path, ["2.1", "2.2"])
    indexer = Indexer({"2.1": 503})
    sender = RecordSender(store, indexer, "H0001")  # type: ignore[arg-type]
    assert sender.run_once() == 0
    assert [uid for uid, _, _ in store.pending_public()] == ["2.1", "2.2"]
    indexer.answers = {}
    assert sender.run_once() == 2


def test_rounds_run_one_at_a_time(tmp_path: Path) -> None:
    """The push route runs a round from an HTTP thread while the sender's own thread may be
    in one: each record is still reported once."""
    store = store_with(tmp_path, ["3.1", "3.2"])
    entered, go_on = threading.Event(), threading.Event()

    class SlowIndexer(Indexer):
        def report_arrival(self, institution: str, arrival: dict[str, Any]) -> dict[str, Any]:
            entered.set()
            go_on.wait(10)
            return super().report_arrival(institution, arrival)

    indexer = SlowIndexer({})
    sender = RecordSender(store, indexer, "H0001")  # type: ignore[arg-type]
    background = threading.Thread(target=sender.run_once)
    background.start()
    assert entered.wait(10)
    other = threading.Thread(target=sender.run_once)
    other.start()
    go_on.set()
    background.join(10)
    other.join(10)
    assert sorted(indexer.accepted) == ["3.1", "3.2"]
