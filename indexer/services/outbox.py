"""Notifications to the operators' alerting endpoint, through a durable outbox.

A route writes the notification in its own transaction (`enqueue`), with what it tells of:
a worker that dies after answering loses nothing. The node holding the delivery lease
(`Deliverer`, a LeasedLoop beside uvicorn under `python -m indexer serve`) posts each one
until the endpoint answers 2xx, backing off after a failure. Delivery is at least once: a
node that dies between the POST and marking it delivered leaves it to the next holder,
which posts it again, so receivers de-duplicate on `X-Imgcloud-Notification` (or on the
payload's ids). Payloads hold ids and codes only, never personal data.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from ..models import Notification
from .leased_loop import LeasedLoop

log = logging.getLogger(__name__)
LEASE_LOCK = 7403  # held (session level) by the deployment's working deliverer
RETRY_MAX_S = 300.0
HEADER = "X-Imgcloud-Notification"


def enqueue(session: Session, kind: str, payload: dict[str, Any]) -> None:
    """Queue a notification in the caller's transaction (it goes out once that commits)."""
    session.add(Notification(kind=kind, payload=payload))


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 2, 4, 8 ... up to 5 min."""
    return min(RETRY_MAX_S, 2.0 ** min(attempts, 16))


class Deliverer(LeasedLoop):
    """Posts due notifications, one per transaction, while it holds the lease. The row is
    locked while it is posted (FOR UPDATE SKIP LOCKED): a node that lost its lease in the
    middle of a POST is not joined on that row by the next holder."""

    lock_id = LEASE_LOCK
    name = "outbox deliverer"
    application_name = "imgcloud-outbox"

    def __init__(
        self, engine: Engine, url: str, timeout_s: float = 5.0, every_s: float = 1.0
    ) -> None:
        super().__init__(engine, every_s)
        self.url = url
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s))

    def work(self) -> bool:
        with Session(self.engine) as session, session.begin():
            row = session.scalars(
                select(Notification)
                .where(Notification.delivered_at.is_(None))
                .where(Notification.next_attempt_at <= func.now())
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return False
            problem = self._post(row)
            if problem is None:
                values: dict[str, Any] = {"delivered_at": func.now(), "last_error": None}
            else:
                log.warning("notification %s (%s): %s", row.id, row.kind, problem)
                values = {
                    "last_error": problem[:200],
                    "next_attempt_at": func.now()
                    + func.make_interval(0, 0, 0, 0, 0, 0, backoff_s(row.attempts)),
                }
            session.execute(
                update(Notification)
                .where(Notification.id == row.id)
                .values(attempts=Notification.attempts + 1, **values)
            )
            return problem is None  # after a failure, the next round (the endpoint is down)

    def _post(self, row: Notification) -> str | None:
        """None when the endpoint took it, else what went wrong (no payload in it)."""
        try:
            answer = self.client.post(self.url, json=row.payload, headers={HEADER: str(row.id)})
        except httpx.HTTPError as exc:
            return f"the alert endpoint is unreachable ({type(exc).__name__})"
        if not answer.is_success:
            return f"the alert endpoint answered {answer.status_code}"
        return None

    def run_forever(self) -> None:
        try:
            super().run_forever()
        finally:
            self.client.close()
