"""Fetch back, pushes and PACS pulls: job queue and retriever logic with fakes of the two
Orthancs (the integration tests run the real ones)."""

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from imgcloud.errors import CentralError
from imgcloud.retrieval import JobQueue, PullSchedule, RetrievalWorker, Retriever, study_date_range


class FakeCentral:
    def __init__(self) -> None:
        self.studies = {"1.2.3": {"c1": ("x1", "1.2.3.1"), "c2": ("x2", "1.2.3.2")}}
        self.files = {"x1": b"one", "x2": b"two"}
        self.pushes: list[dict[str, Any]] = []
        self.reports: list[tuple[str, dict]] = []
        self.down = False

    def find_study(self, uid: str) -> str | None:
        if self.down:
            raise CentralError("central did not answer")
        return uid if uid in self.studies else None

    def list_instances(self, study_id: str) -> list[tuple[str, str]]:
        return list(self.studies[study_id].values())

    def read_instance(self, instance_id: str) -> bytes:
        return self.files[instance_id]

    def pending_pushes(self, institution: str) -> list[dict[str, Any]]:
        return [p for p in self.pushes if p["to_institution"] == institution]

    def set_push_state(self, push_id: str, change: dict[str, Any]) -> dict[str, Any]:
        self.reports.append((push_id, change))
        if change["state"] == "claimed":
            self.pushes = [p for p in self.pushes if p["push_id"] != push_id]
        return {}


class FakeLocal:
    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.sops: dict[str, set[str]] = {}
        self.c_stores: list[tuple[str, str]] = []
        self.answers: list[dict[str, str]] = []
        self.moved: list[int] = []
        self.queries: list[dict[str, str]] = []

    def find_study(self, uid: str) -> str | None:
        return f"local-{uid}" if self.sops.get(uid) else None

    def sop_uids(self, uid: str) -> set[str]:
        return set(self.sops.get(uid, set()))

    def store(self, dicom: bytes) -> None:
        self.stored.append(dicom)
        sop = {b"one": "1.2.3.1", b"two": "1.2.3.2"}[dicom]
        self.sops.setdefault("1.2.3", set()).add(sop)

    def c_store(self, modality: str, study_id: str) -> None:
        self.c_stores.append((modality, study_id))

    def query(self, modality: str, query: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
        self.queries.append(query)
        return "q1", self.answers

    def retrieve(self, query_id: str, index: int) -> None:
        self.moved.append(index)


@pytest.fixture
def parts(tmp_path: Path):
    clock = {"now": 1000.0}
    jobs = JobQueue(tmp_path / "jobs.sqlite", max_attempts=3, clock=lambda: clock["now"])
    central, local = FakeCentral(), FakeLocal()
    retriever = Retriever(central, local, "H0002")
    return jobs, central, local, retriever, clock


def test_fetch_back_stores_only_what_is_missing_then_delivers(parts) -> None:
    _jobs, _central, local, retriever, _ = parts
    local.sops["1.2.3"] = {"1.2.3.1"}
    result = retriever.fetch({"study_instance_uid": "1.2.3", "deliver_to": "HOSP_PACS"})
    assert local.stored == [b"two"]
    assert local.c_stores == [("HOSP_PACS", "local-1.2.3")]
    assert result == {"instances": 2, "fetched": 1, "delivered_to": "HOSP_PACS"}


def test_push_is_claimed_once_delivered_and_reported(parts) -> None:
    jobs, central, local, retriever, clock = parts
    central.pushes.append(
        {"push_id": "p1", "study_instance_uid": "1.2.3", "to_institution": "H0002"}
    )
    worker = RetrievalWorker(
        jobs, retriever, push_target=lambda: "HOSP_PACS", clock=lambda: clock["now"]
    )
    assert worker.poll_pushes() == 1
    assert worker.poll_pushes() == 0  # claimed: not offered again
    jobs.add("push", {"study_instance_uid": "1.2.3"}, push_id="p1")  # same push: same job
    assert worker.run_once()
    assert not worker.run_once()
    assert local.c_stores == [("HOSP_PACS", "local-1.2.3")]
    states = [change["state"] for _, change in central.reports]
    assert states == ["claimed", "delivered"]
    assert central.reports[-1][1]["instances"] == 2


def test_failed_jobs_retry_with_backoff_then_give_up_and_report(parts) -> None:
    jobs, central, _local, retriever, clock = parts
    central.down = True
    job = jobs.add("push", {"study_instance_uid": "1.2.3"}, push_id="p9")
    worker = RetrievalWorker(jobs, retriever, push_poll_s=lambda: 1e9, clock=lambda: clock["now"])
    worker._last_poll = clock["now"]
    assert worker.run_once()
    assert jobs.get(job.job_id).state == "queued"  # type: ignore[union-attr]
    assert not worker.run_once()  # backing off
    for _ in range(2):
        clock["now"] += 600
        central.down = True
        worker.run_once()
    final = jobs.get(job.job_id)
    assert final is not None and final.state == "failed" and final.attempts == 3
    assert "did not answer" in (final.last_error or "")
    # the sender's side learns why: reported to central once the edge gives up
    assert central.reports[-1][1]["state"] == "failed"


def test_study_not_at_central_is_a_clear_error(parts) -> None:
    _jobs, _central, _local, retriever, _ = parts
    with pytest.raises(Exception, match="not in the central archive"):
        retriever.fetch({"study_instance_uid": "9.9"})


def test_pacs_pull_moves_only_studies_not_complete_here(parts) -> None:
    _jobs, _central, local, retriever, _ = parts
    local.answers = [
        {"StudyInstanceUID": "1.2.3", "NumberOfStudyRelatedInstances": "2"},
        {"StudyInstanceUID": "4.5.6", "NumberOfStudyRelatedInstances": "10"},
    ]
    local.sops["1.2.3"] = {"1.2.3.1", "1.2.3.2"}
    result = retriever.pacs_pull(
        {"source_aet": "HOSP_PACS", "modalities": ["CT", "MR"], "days_back": 1},
        dt.date(2026, 11, 28),
    )
    assert result == {"found": 2, "retrieved": 1, "already_here": 1}
    assert local.moved == [1]
    assert local.queries[0]["StudyDate"] == "20261127-20261128"
    assert local.queries[0]["ModalitiesInStudy"] == "CT\\MR"


def test_schedules_start_at_their_interval_and_survive_a_restart(parts, tmp_path) -> None:
    jobs, _central, _local, retriever, clock = parts
    schedule = PullSchedule("recent", 600, {"source_aet": "HOSP_PACS", "days_back": 1})
    worker = RetrievalWorker(
        jobs, retriever, schedules=lambda: [schedule], clock=lambda: clock["now"]
    )
    assert worker.start_due_schedules() == ["recent"]
    assert worker.start_due_schedules() == []
    clock["now"] += 599
    assert worker.start_due_schedules() == []
    jobs.close()
    reopened = JobQueue(tmp_path / "jobs.sqlite", clock=lambda: clock["now"])
    worker = RetrievalWorker(
        reopened, retriever, schedules=lambda: [schedule], clock=lambda: clock["now"]
    )
    assert worker.start_due_schedules() == []  # the last run is remembered
    clock["now"] += 1
    assert worker.start_due_schedules() == ["recent"]


def test_date_range() -> None:
    assert study_date_range(0, dt.date(2026, 1, 1)) == "20260101-20260101"
    assert study_date_range(1, dt.date(2026, 1, 1)) == "20251231-20260101"
