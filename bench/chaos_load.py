"""The continuous work of the chaos run (bench/chaos.py), each loop in a thread of its own,
every operation timestamped with its outcome so that a kill's effect can be read off:

- `ingest`: a modality sends a two-instance study to hospital A's edge every `period_s`
  (C-STORE); the edge forwards it to central. At the end every sent instance must be at
  central exactly once (lost, duplicated).
- `archive`: a hospital gateway's upload of one instance through the gateway (indexer's
  ingest check, a central node, the bucket, the index), as the edges' forwarding does:
  the write path end to end, one request at a time.
- `viewer`: QIDO-RS of the studies, then WADO-RS metadata of one of the studies `prepare`
  sent through the edge, at random (gateway, Keycloak token, indexer's decision, a central
  node, the bucket).
- `records`: the indexer's writes (an exam record, then its report), each acknowledged
  one read back at the end (acknowledged then missing).
Tokens are taken again every `token_every_s` (a Keycloak node may be the one killed).
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pydicom

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient

TIMEOUT_S = 20.0
INSTITUTION = "H0001"


@dataclass
class Outcome:
    at: float  # time.monotonic() when the operation ended
    ok: bool
    seconds: float
    error: str | None = None


@dataclass
class Loop:
    """One workload: its outcomes in order, and what it wrote (for the final accounting)."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    acked: dict[str, float] = field(default_factory=dict)  # acknowledged write -> when
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_once(self, operation: Callable[[], str | None]) -> None:
        start = time.monotonic()
        try:
            written = operation()
        except Exception as exc:  # any failure a client sees counts; the loop goes on
            end = time.monotonic()
            with self.lock:
                self.outcomes.append(Outcome(end, False, end - start, short(exc)))
            return
        end = time.monotonic()
        with self.lock:
            self.outcomes.append(Outcome(end, True, end - start))
            if written:
                self.acked[written] = end

    def between(self, start: float, end: float) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if start <= o.at < end]


def short(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {str(exc)[:80]}"


class Tokens:
    """Access tokens taken again every `every_s` (and after a failure), per kind."""

    def __init__(self, stack: StackClient, every_s: float) -> None:
        self.stack, self.every_s = stack, every_s
        self._got: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> str:
        with self._lock:
            got = self._got.get(kind)
        if got and time.monotonic() - got[0] < self.every_s:
            return got[1]
        if kind == "gateway":
            token = self.stack.gateway_account_token(INSTITUTION)
        else:
            user = self.stack[f"DEMO_{kind}_USER"]
            token = str(
                self.stack.password_token(user, self.stack[f"DEMO_{kind}_PASSWORD"])["access_token"]
            )
        with self._lock:
            self._got[kind] = (time.monotonic(), token)
        return token

    def forget(self, kind: str) -> None:
        with self._lock:
            self._got.pop(kind, None)


class Workload:
    """The four loops of the module docstring, started and stopped together."""

    def __init__(self, stack: StackClient, seed: int, period_s: float = 1.0) -> None:
        self.stack, self.period_s = stack, period_s
        self.rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.seed = seed
        self.tokens = Tokens(stack, every_s=60.0)
        self.loops = {n: Loop(n) for n in ("ingest", "archive", "viewer", "records")}
        self.sent_studies: list[SampleStudy] = []
        self.readable: list[str] = []  # the viewer's studies (prepare)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._n = 0
        self._n_lock = threading.Lock()

    def next_seed(self) -> int:
        with self._n_lock:
            self._n += 1
            return self.seed * 10_000 + self._n

    def prepare(self, studies: int = 3, timeout_s: float = 180.0) -> None:
        """Studies for the viewer: sent through hospital A's edge (which records their
        arrival, so A's radiologist may read them) and readable through the gateway."""
        uids = []
        for _ in range(studies):
            study = make_study(self.next_seed(), "MR", instances=2, institution_code=INSTITUTION)
            result = self.stack.send_to_edge("A", study.instances())
            if not result.ok:
                raise RuntimeError(f"the viewer's studies: C-STORE statuses {result.failed}")
            uids.append(study.exam.study_instance_uid)
        deadline = time.monotonic() + timeout_s
        with self.stack.gateway(self.tokens.get("RADIOLOGIST_A")) as viewer:
            for uid in uids:
                while viewer.get(f"/dicom-web/studies/{uid}/metadata").status_code != 200:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the viewer's studies not readable in {timeout_s} s")
                    time.sleep(1.0)
        self.readable = uids

    def start(self) -> None:
        bodies: dict[str, Callable[[], str | None]] = {
            "ingest": self.ingest_one,
            "archive": self.archive_one,
            "viewer": self.view_one,
            "records": self.record_one,
        }
        for name, body in bodies.items():
            thread = threading.Thread(target=self._run, args=(name, body), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT_S * 3)

    def _run(self, name: str, body: Callable[[], str | None]) -> None:
        loop = self.loops[name]
        period = self.period_s * (2 if name == "ingest" else 1)
        while not self._stop.is_set():
            begun = time.monotonic()
            loop.run_once(body)
            self._stop.wait(max(0.05, period - (time.monotonic() - begun)))

    # --- the operations: each raises on what a client would see as an error -------------

    def ingest_one(self) -> str | None:
        study = make_study(self.next_seed(), "MR", instances=2, institution_code=INSTITUTION)
        self.sent_studies.append(study)  # sent or not: the accounting asks central
        result = self.stack.send_to_edge("A", study.instances())
        if not result.ok:
            raise RuntimeError(f"C-STORE statuses {sorted(set(result.failed.values()))}")
        return study.exam.study_instance_uid

    def archive_one(self) -> str | None:
        study = make_study(self.next_seed(), "MR", instances=1, institution_code=INSTITUTION)
        ds = next(study.instances())
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        try:
            with self.stack.gateway(self.tokens.get("gateway")) as api:
                answer = api.post(
                    "/orthanc/instances",
                    content=buffer.getvalue(),
                    headers={"Content-Type": "application/dicom"},
                    timeout=TIMEOUT_S,
                )
                answer.raise_for_status()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 401:
                self.tokens.forget("gateway")
            raise
        return str(ds.SOPInstanceUID)

    def view_one(self) -> str | None:
        with self.stack.gateway(self.tokens.get("RADIOLOGIST_A")) as viewer:
            found = viewer.get("/dicom-web/studies", params={"limit": 20}, timeout=TIMEOUT_S)
            found.raise_for_status()
            if self.readable:
                uid = self.rng.choice(self.readable)
                meta = viewer.get(f"/dicom-web/studies/{uid}/metadata", timeout=TIMEOUT_S)
                meta.raise_for_status()
                if not meta.json():
                    raise RuntimeError("empty metadata")
        return None

    def record_one(self) -> str | None:
        study = make_study(self.next_seed(), "CT", instances=1, institution_code=INSTITUTION)
        base = f"/api/v1/institutions/{INSTITUTION}"
        with self.stack.gateway(self.tokens.get("ADMIN")) as api:
            for path, body in (
                (f"{base}/patients/{study.patient.mrn}", patient_record(study)),
                (f"{base}/exams/{study.exam.exam_no}", exam_record(study)),
                (f"{base}/exams/{study.exam.exam_no}/report", report_record(study)),
            ):
                answer = api.put(path, json=body, timeout=TIMEOUT_S)
                answer.raise_for_status()
        return study.exam.exam_no
