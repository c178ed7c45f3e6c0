"""Stale gateways: one that missed `stale_after_missed` heartbeats (3 by default, of the
interval central told it) is marked stale and an alert is raised through the platform's
alert path: a `fleet_alerts` row, a log line (gateway id and institution code: no personal
data), and the operators' webhook through the notification outbox. When its heartbeats
return, the alert is cleared the same way.

The loop is a LeasedLoop (lock FLEET_LOCK): every indexer node may run one, one works, so
an alert is raised once. It alone sets and clears `fleet_gateways.stale`, with the alert,
in one transaction; a heartbeat only writes its time, so the two never race on the flag.
Start it with `fleet_loop(engine)` beside the audit sealer and the outbox deliverer.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Engine, and_, func, not_, or_, select, update
from sqlalchemy.orm import Session

from ..config import get_settings
from ..errors import NotFound
from ..models.fleet import FleetAlert, FleetGateway
from ..security.auth import Principal
from . import access, outbox
from .leased_loop import LeasedLoop

log = logging.getLogger("indexer.alerts")
FLEET_LOCK = 7404  # held (session level) by the deployment's working staleness loop
STALE = "gateway-stale"
Change = Literal["raise", "clear"] | None


def stale_after_s(interval_s: float, missed: int) -> float:
    """Seconds without a heartbeat after which a gateway is stale."""
    return max(interval_s, 0.1) * missed


def is_stale(last: dt.datetime, now: dt.datetime, interval_s: float, missed: int) -> bool:
    """No heartbeat since `last` for more than `missed` intervals."""
    return (now - last).total_seconds() > stale_after_s(interval_s, missed)


def change(
    flagged: bool, last: dt.datetime, now: dt.datetime, interval_s: float, missed: int
) -> Change:
    """What the loop does for one gateway: raise an alert, clear it, or nothing."""
    stale = is_stale(last, now, interval_s, missed)
    if stale and not flagged:
        return "raise"
    if flagged and not stale:
        return "clear"
    return None


class FleetLoop(LeasedLoop):
    lock_id = FLEET_LOCK
    name = "fleet staleness"
    application_name = "imgcloud-fleet"

    def __init__(
        self, engine: Engine, every_s: float, missed: int, webhook: bool, batch: int = 200
    ) -> None:
        super().__init__(engine, every_s)
        self.missed = missed
        self.webhook = webhook  # notifications are queued only where a deliverer posts them
        self.batch = batch

    def work(self) -> bool:
        """One batch of gateways whose flag may be wrong, in one transaction."""
        with Session(self.engine) as session, session.begin():
            now = session.scalar(select(func.now()))
            assert now is not None
            last = func.coalesce(FleetGateway.last_heartbeat_at, FleetGateway.first_seen)
            limit = func.make_interval(0, 0, 0, 0, 0, 0, FleetGateway.interval_s * self.missed)
            overdue = last < func.now() - limit  # now(): the transaction's, as `now`
            rows = session.scalars(  # those whose flag is wrong; change() decides
                select(FleetGateway)
                .where(
                    or_(
                        and_(FleetGateway.stale, not_(overdue)),
                        and_(not_(FleetGateway.stale), overdue),
                    )
                )
                .order_by(FleetGateway.gateway_id)
                .limit(self.batch)
                .with_for_update(skip_locked=True)
            ).all()
            done = 0
            for row in rows:
                seen = row.last_heartbeat_at or row.first_seen
                what = change(row.stale, seen, now, row.interval_s, self.missed)
                if what == "raise":
                    self._raise(session, row, now)
                elif what == "clear":
                    self._clear(session, row, now)
                done += what is not None
            return done == self.batch  # a full batch changed: look again now

    def _raise(self, session: Session, row: FleetGateway, now: dt.datetime) -> None:
        row.stale, row.stale_since = True, now
        alert = FleetAlert(
            kind=STALE,
            gateway_id=row.gateway_id,
            institution=row.institution,
            last_heartbeat_at=row.last_heartbeat_at,
        )
        session.add(alert)
        session.flush()
        if self.webhook:
            payload = {"alert_id": alert.id, "kind": STALE, "gateway": row.gateway_id}
            outbox.enqueue(session, STALE, payload | {"owner": row.institution})
        log.warning(
            "ALERT fleet-%s %s: gateway %s of %s sent no heartbeat for %d intervals",
            alert.id,
            STALE,
            row.gateway_id,
            row.institution,
            self.missed,
        )

    def _clear(self, session: Session, row: FleetGateway, now: dt.datetime) -> None:
        row.stale, row.stale_since = False, None
        ids = session.scalars(
            update(FleetAlert)
            .where(FleetAlert.gateway_id == row.gateway_id, FleetAlert.kind == STALE)
            .where(FleetAlert.cleared_at.is_(None))
            .values(cleared_at=now)
            .returning(FleetAlert.id)
        ).all()
        if self.webhook:
            payload = {"alert_ids": list(ids), "kind": "gateway-back", "gateway": row.gateway_id}
            outbox.enqueue(session, "gateway-back", payload | {"owner": row.institution})
        log.warning(
            "ALERT cleared fleet-%s: gateway %s of %s sends heartbeats again",
            ",".join(map(str, ids)),
            row.gateway_id,
            row.institution,
        )


def fleet_loop(
    engine: Engine,
    every_s: float | None = None,
    webhook: bool = False,
    missed: int | None = None,
) -> FleetLoop:
    """The staleness loop (start() it, or run_forever() on a thread of the caller's);
    `webhook`: queue the alerts' notifications (INDEXER_ALERT_WEBHOOK_URL is set).
    `every_s` and `missed` default to the settings' (read only when one is not given)."""
    if every_s is None or missed is None:
        settings = get_settings()
        every_s = settings.fleet_stale_check_every_s if every_s is None else every_s
        missed = settings.fleet_stale_after_missed if missed is None else missed
    return FleetLoop(engine, every_s=every_s, missed=missed, webhook=webhook)


# --- operators -----------------------------------------------------------------------


class FleetAlertOut(BaseModel):
    id: int
    kind: str
    gateway_id: str
    institution: str
    raised_at: dt.datetime
    last_heartbeat_at: dt.datetime | None
    cleared_at: dt.datetime | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None


def _out(row: FleetAlert) -> FleetAlertOut:
    return FleetAlertOut.model_validate(row, from_attributes=True)


def _scoped(who: Principal) -> Any:
    scope = access.require(access.may_use_console(who))
    query = select(FleetAlert)
    if not access.unconfined(scope):
        query = query.where(FleetAlert.institution == access.confined_to(scope))
    return query


def open_alerts(
    session: Session, who: Principal, open_only: bool = True, limit: int = 100
) -> list[FleetAlertOut]:
    """Gateway alerts the operator may see, newest first; open: not cleared and not
    acknowledged."""
    query = _scoped(who).order_by(FleetAlert.id.desc()).limit(limit)
    if open_only:
        query = query.where(FleetAlert.cleared_at.is_(None), FleetAlert.acknowledged_at.is_(None))
    return [_out(row) for row in session.scalars(query)]


def ack_alert(session: Session, who: Principal, alert_id: int) -> FleetAlertOut:
    """Acknowledge one (who and when are kept); 404 outside the operator's scope."""
    row = session.scalars(_scoped(who).where(FleetAlert.id == alert_id).with_for_update()).first()
    if row is None:
        raise NotFound("no such alert")
    if row.acknowledged_at is None:
        row.acknowledged_by = who.username
        row.acknowledged_at = dt.datetime.now(dt.UTC)
    session.commit()
    return _out(row)
