"""The regional health information platform (区域健康信息平台) issues master index IDs.

Contract (HTTP, JSON), for a platform that implements it:

    POST {platform_url}/master-index/batch
    {"requests": [{"institution_code": "H0001", "national_id": "<18 chars>",
                   "exam_no": "H0001261102..."}]}
    -> 200 {"master_index_ids": ["MI...", ...]}     (same order, one per request)

The same request always gets the same ID (the platform keeps the mapping). Any other
answer, or none within the timeout, leaves the requests queued; they are retried with
capped exponential backoff and the master index appears when the platform answers.

`BuiltInPlatform` is that platform side for deployments that have none: IDs are derived
with a keyed HMAC from the three values, so they are stable and reveal nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Protocol

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..errors import PlatformUnavailable
from ..models import Exam, Person, PlatformRequest
from ..security.pii import PiiCipher
from .leased_loop import BackgroundLoop

log = logging.getLogger(__name__)
Request = tuple[str, str, str]  # institution code, national ID, exam no.


class MasterIndexPlatform(Protocol):
    def issue(self, requests: list[Request]) -> list[str]: ...


class BuiltInPlatform:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the built-in platform needs a key of at least 16 bytes")
        self.key = key

    def issue(self, requests: list[Request]) -> list[str]:
        out = []
        for code, number, exam_no in requests:
            mac = hmac.new(self.key, f"{code}|{number}|{exam_no}".encode(), hashlib.sha256)
            out.append("MI" + base64.b32encode(mac.digest()[:15]).decode())
        return out


class HttpPlatform:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        token: Callable[[], str | None] = lambda: None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.client = httpx.Client(
            base_url=url.rstrip("/"), timeout=httpx.Timeout(timeout_s), transport=transport
        )
        self.token = token

    def issue(self, requests: list[Request]) -> list[str]:
        body = {
            "requests": [
                {"institution_code": c, "national_id": n, "exam_no": e} for c, n, e in requests
            ]
        }
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            answer = self.client.post("/master-index/batch", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PlatformUnavailable(f"platform did not answer: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise PlatformUnavailable(f"platform answered HTTP {answer.status_code}")
        try:
            ids = answer.json()["master_index_ids"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PlatformUnavailable("platform answer is malformed") from exc
        if len(ids) != len(requests) or not all(isinstance(i, str) and i for i in ids):
            raise PlatformUnavailable("platform answered a different number of IDs")
        return [str(i)[:64] for i in ids]


class MasterIndexQueue(BackgroundLoop):
    """Drains platform_requests in batches; failures back off and stay queued.

    Every uvicorn worker of every node runs one, without a lease: rows are taken with
    `FOR UPDATE SKIP LOCKED`, so two queues never work on the same request."""

    name = "master-index"

    def __init__(
        self,
        sessions: Callable[[], Session],
        platform: MasterIndexPlatform,
        pii: PiiCipher,
        *,
        batch: int = 500,
        retry_max_s: float = 300.0,
    ) -> None:
        super().__init__(every_s=1.0)
        self.sessions = sessions
        self.platform = platform
        self.pii = pii
        self.batch = batch
        self.retry_max_s = retry_max_s

    def run_once(self) -> int:
        """One batch: returns how many exams got their master index."""
        now = dt.datetime.now(dt.UTC)
        with self.sessions() as session, session.begin():
            rows = session.execute(
                select(PlatformRequest.exam_id, PlatformRequest.attempts, Exam.institution_code,
                       Exam.exam_no, Person.national_id_enc)
                .join(Exam, Exam.id == PlatformRequest.exam_id)
                .join(Person, Person.person_id == Exam.person_id)
                .where(PlatformRequest.next_attempt_at <= now)
                .order_by(PlatformRequest.next_attempt_at)
                .limit(self.batch)
                .with_for_update(of=PlatformRequest, skip_locked=True)
            ).all()  # fmt: skip
            if not rows:
                return 0
            # Lock the exams too, skipping any another transaction holds (a bulk intake
            # rewriting them): this worker never waits on a lock, so it can never be part
            # of a deadlock; skipped exams keep their request for the next round.
            free = set(
                session.execute(
                    select(Exam.id)
                    .where(Exam.id.in_([r.exam_id for r in rows]))
                    .order_by(Exam.institution_code, Exam.exam_no)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            rows = [r for r in rows if r.exam_id in free]
            if not rows:
                return 0
            requests = [
                (r.institution_code, self.pii.decrypt(r.national_id_enc, "persons.national_id"),
                 r.exam_no)
                for r in rows
            ]  # fmt: skip
            try:
                ids = self.platform.issue(requests)
            except PlatformUnavailable as exc:
                for r in rows:
                    delay = min(self.retry_max_s, 2.0 ** min(r.attempts, 16))
                    session.execute(
                        update(PlatformRequest)
                        .where(PlatformRequest.exam_id == r.exam_id)
                        .values(
                            attempts=r.attempts + 1,
                            next_attempt_at=now + dt.timedelta(seconds=delay),
                            last_error=str(exc)[:300],
                        )
                    )
                log.warning("master index: %d requests wait for the platform: %s", len(rows), exc)
                return 0
            for r, master_id in zip(rows, ids, strict=True):
                session.execute(
                    update(Exam).where(Exam.id == r.exam_id).values(master_index_id=master_id)
                )
            session.execute(
                delete(PlatformRequest).where(
                    PlatformRequest.exam_id.in_([r.exam_id for r in rows])
                )
            )
            return len(rows)

    def work(self) -> bool:
        return self.run_once() > 0
