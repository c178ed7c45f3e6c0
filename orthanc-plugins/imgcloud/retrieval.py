"""Bringing studies to the hospital: fetch back from central (回溯), receive cross-hospital
pushes (跨院推送), and pull from the hospital PACS by C-FIND/C-MOVE.

Every such transfer is a job in a durable SQLite table beside the forwarding queue, so a
restart resumes it. Jobs are idempotent: instances already on the edge are not fetched
again, and delivering a study twice to a PACS stores nothing twice there.

Kinds:
- fetch:     study at central -> this edge -> optionally C-STORE to a hospital AE
- push:      like fetch, claimed from central's push list for this institution; the
             outcome is reported back to central, where both hospitals can read it
- pacs-pull: C-FIND at a hospital PACS, then C-MOVE to this edge what is not here yet
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import PluginError, RetrievalError
from .sqlite_store import SqliteStore
from .worker import Worker

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id       TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,            -- fetch | push | pacs-pull
    params       TEXT NOT NULL,            -- JSON: study UID, target AE, query...
    push_id      TEXT UNIQUE,              -- central's push ID (kind push)
    state        TEXT NOT NULL,            -- queued | running | done | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL NOT NULL DEFAULT 0,
    last_error   TEXT,
    result       TEXT,                     -- JSON summary when done
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, not_before);
CREATE TABLE IF NOT EXISTS schedule_runs (
    name      TEXT PRIMARY KEY,
    last_run  REAL NOT NULL
);
"""
KINDS = ("fetch", "push", "pacs-pull")


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    params: dict[str, Any]
    push_id: str | None
    state: str
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JobQueue(SqliteStore):
    migrations = (SCHEMA,)  # 1: the jobs file as it stood before the versioning
    synchronous = "FULL"

    def __init__(
        self,
        path: Path,
        *,
        max_attempts: int = 8,
        retry_max_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path)
        self.max_attempts = max_attempts
        self.retry_max_s = retry_max_s
        self.clock = clock

    def add(self, kind: str, params: dict[str, Any], push_id: str | None = None) -> Job:
        """A new job; for a push already known (same push ID) the existing job."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        now = self.clock()
        job_id = str(uuid.uuid4())
        with self.transaction() as db:
            db.execute(
                """INSERT INTO jobs (job_id, kind, params, push_id, state, created_at, updated_at)
                   VALUES (?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT (push_id) DO NOTHING""",
                (job_id, kind, json.dumps(params), push_id, now, now),
            )
            if push_id is not None:
                found = db.execute("SELECT job_id FROM jobs WHERE push_id = ?", (push_id,))
                job_id = found.fetchone()[0]
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        row = self.one(
            """SELECT job_id, kind, params, push_id, state, attempts, last_error, result,
                      created_at, updated_at FROM jobs WHERE job_id = ?""",
            (job_id,),
        )
        if row is None:
            return None
        values = list(row)
        values[2] = json.loads(values[2])
        values[7] = json.loads(values[7]) if values[7] else None
        return Job(*values)

    def next_due(self) -> Job | None:
        """The oldest job due (a job a crash left 'running' is due again)."""
        row = self.one(
            """SELECT job_id FROM jobs WHERE state IN ('queued', 'running')
               AND not_before <= ? ORDER BY created_at LIMIT 1""",
            (self.clock(),),
        )
        return self.get(row[0]) if row else None

    def mark_running(self, job_id: str) -> None:
        self.run(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? "
            "WHERE job_id = ?",
            (self.clock(), job_id),
        )

    def mark_done(self, job_id: str, result: dict[str, Any]) -> None:
        self.run(
            "UPDATE jobs SET state = 'done', last_error = NULL, result = ?, updated_at = ? "
            "WHERE job_id = ?",
            (json.dumps(result), self.clock(), job_id),
        )

    def mark_failed(self, job_id: str, reason: str) -> bool:
        """Record a failed attempt; True if it will be retried, False if it gave up."""
        job = self.get(job_id)
        attempts = job.attempts if job else self.max_attempts
        retried = attempts < self.max_attempts
        now = self.clock()
        delay = min(self.retry_max_s, 2.0 ** max(attempts - 1, 0))
        self.run(
            """UPDATE jobs SET state = CASE WHEN ? THEN 'queued' ELSE 'failed' END,
                 last_error = ?, not_before = CASE WHEN ? THEN ? ELSE not_before END,
                 updated_at = ? WHERE job_id = ?""",
            (retried, reason[:500], retried, now + delay, now, job_id),
        )
        return retried

    def last_run(self, name: str) -> float | None:
        row = self.one("SELECT last_run FROM schedule_runs WHERE name = ?", (name,))
        return row[0] if row else None

    def record_run(self, name: str, when: float) -> None:
        self.run(
            """INSERT INTO schedule_runs (name, last_run) VALUES (?, ?)
               ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run""",
            (name, when),
        )


class Central(Protocol):
    def find_study(self, study_instance_uid: str) -> str | None: ...
    def list_instances(self, study_id: str) -> list[tuple[str, str]]: ...
    def read_instance(self, instance_id: str) -> bytes: ...
    def pending_pushes(self, institution: str) -> list[dict[str, Any]]: ...
    def set_push_state(self, push_id: str, change: dict[str, Any]) -> dict[str, Any]: ...


class Local(Protocol):
    def find_study(self, study_instance_uid: str) -> str | None: ...
    def sop_uids(self, study_instance_uid: str) -> set[str]: ...
    def store(self, dicom: bytes) -> None: ...
    def c_store(self, modality: str, study_id: str) -> None: ...
    def query(self, modality: str, query: dict[str, str]) -> tuple[str, list[dict[str, str]]]: ...
    def retrieve(self, query_id: str, index: int) -> None: ...


def study_date_range(days_back: int, today: dt.date) -> str:
    """DICOM date range from `days_back` days ago to today (0: today only)."""
    first = today - dt.timedelta(days=days_back)
    return f"{first:%Y%m%d}-{today:%Y%m%d}"


@dataclass
class Retriever:
    central: Central
    local: Local
    institution: str

    def fetch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bring a study from central to this edge, then deliver it to a hospital AE."""
        study_uid = params["study_instance_uid"]
        central_id = self.central.find_study(study_uid)
        if central_id is None:
            raise RetrievalError("the study is not in the central archive")
        remote = self.central.list_instances(central_id)
        have = self.local.sop_uids(study_uid)
        fetched = 0
        for instance_id, sop_uid in remote:
            if sop_uid in have:
                continue
            self.local.store(self.central.read_instance(instance_id))
            fetched += 1
        result: dict[str, Any] = {"instances": len(remote), "fetched": fetched}
        target = params.get("deliver_to")
        if target:
            local_id = self.local.find_study(study_uid)
            if local_id is None:
                raise RetrievalError("the study vanished from this edge before delivery")
            self.local.c_store(target, local_id)
            result["delivered_to"] = target
        return result

    def pacs_pull(self, params: dict[str, Any], today: dt.date) -> dict[str, Any]:
        """C-FIND at the PACS, then C-MOVE here each study not already complete here."""
        query = {
            "StudyInstanceUID": params.get("study_instance_uid", ""),
            "PatientID": params.get("patient_id", ""),
            "AccessionNumber": params.get("accession_number", ""),
            "ModalitiesInStudy": "\\".join(params.get("modalities", [])),
            "StudyDate": params.get("study_date")
            or (study_date_range(params["days_back"], today) if "days_back" in params else ""),
            "NumberOfStudyRelatedInstances": "",
        }
        query_id, answers = self.local.query(params["source_aet"], query)
        moved = skipped = 0
        for index, answer in enumerate(answers):
            uid = answer.get("StudyInstanceUID", "")
            expected = answer.get("NumberOfStudyRelatedInstances", "")
            have = len(self.local.sop_uids(uid)) if uid else 0
            if have and expected.isdigit() and have >= int(expected):
                skipped += 1
                continue
            self.local.retrieve(query_id, index)
            moved += 1
        return {"found": len(answers), "retrieved": moved, "already_here": skipped}

    def run(self, job: Job, today: dt.date) -> dict[str, Any]:
        if job.kind == "pacs-pull":
            return self.pacs_pull(job.params, today)
        result = self.fetch(job.params)
        if job.kind == "push" and job.push_id:
            self.central.set_push_state(
                job.push_id,
                {
                    "state": "delivered",
                    "institution": self.institution,
                    "instances": result["instances"],
                    "detail": f"stored to {result.get('delivered_to', 'the edge')}",
                },
            )
        return result


@dataclass(frozen=True)
class PullSchedule:
    name: str
    every_s: float
    params: dict[str, Any]


class RetrievalWorker(Worker):
    """Polls central for pushes, starts scheduled PACS pulls, and runs due jobs."""

    name = "imgcloud-retriever"

    def __init__(
        self,
        jobs: JobQueue,
        retriever: Retriever,
        *,
        schedules: Callable[[], list[PullSchedule]] = list,
        push_poll_s: Callable[[], float] = lambda: 10.0,
        push_target: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(every_s=1.0)
        self.jobs = jobs
        self.retriever = retriever
        self.schedules = schedules
        self.push_poll_s = push_poll_s
        self.push_target = push_target  # the hospital AE pushed studies go to
        self.clock = clock
        self._last_poll = 0.0

    def poll_pushes(self) -> int:
        """Claim this institution's pending pushes as local jobs; returns how many."""
        institution = self.retriever.institution
        claimed = 0
        for push in self.retriever.central.pending_pushes(institution):
            target = push.get("deliver_to") or self.push_target()
            params = {"study_instance_uid": push["study_instance_uid"], "deliver_to": target}
            self.jobs.add("push", params, push_id=push["push_id"])  # idempotent per push
            self.retriever.central.set_push_state(
                push["push_id"], {"state": "claimed", "institution": institution}
            )
            claimed += 1
        return claimed

    def start_due_schedules(self) -> list[str]:
        now = self.clock()
        started = []
        for schedule in self.schedules():
            last = self.jobs.last_run(schedule.name)
            if last is not None and now - last < schedule.every_s:
                continue
            self.jobs.add("pacs-pull", {**schedule.params, "schedule": schedule.name})
            self.jobs.record_run(schedule.name, now)
            started.append(schedule.name)
        return started

    def run_once(self) -> bool:
        now = self.clock()
        if now - self._last_poll >= self.push_poll_s():
            self._last_poll = now
            try:
                self.poll_pushes()
            except PluginError as exc:
                log.warning("polling central for pushes failed: %s", exc)
        self.start_due_schedules()
        job = self.jobs.next_due()
        if job is None:
            return False
        self.jobs.mark_running(job.job_id)
        try:
            result = self.retriever.run(job, dt.date.today())
        except (PluginError, KeyError) as exc:
            reason = str(exc) if isinstance(exc, PluginError) else f"missing parameter {exc}"
            retried = self.jobs.mark_failed(job.job_id, reason)
            log.warning(
                "%s job %s failed (%s): %s",
                job.kind,
                job.job_id,
                "retry" if retried else "final",
                reason,
            )
            if not retried and job.kind == "push" and job.push_id:
                self._report_push_failure(job.push_id, reason)
            return True
        self.jobs.mark_done(job.job_id, result)
        log.info("%s job %s done: %s", job.kind, job.job_id, result)
        return True

    def _report_push_failure(self, push_id: str, reason: str) -> None:
        try:
            self.retriever.central.set_push_state(
                push_id,
                {"state": "failed", "institution": self.retriever.institution, "detail": reason},
            )
        except PluginError as exc:
            log.warning("could not report push %s as failed: %s", push_id, exc)

    def work(self) -> bool:
        return self.run_once()
