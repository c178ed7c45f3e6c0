"""Break-glass (紧急访问): a clinician or radiologist who must see another institution's
study now, without a referral, push or 互认 lookup, states a reason and gets access for a
few hours, for themselves alone. Every use raises an alert that auditors and the owning
institution's administrators see and acknowledge."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, cast

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, Field
from sqlalchemy import select

from ...errors import NotFound
from ...models import Alert
from ...models import grant as grant_model
from ...schemas import UID, Strict
from ...services import access, outbox
from ...services.access import StudyFacts
from ..deps import Caller, Reg, get_pii

router = APIRouter(prefix="/v1", tags=["break-glass"])
log = logging.getLogger("indexer.alerts")


class BreakGlassIn(Strict):
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    reason: str = Field(min_length=10, max_length=500, description="why, in a sentence")


class BreakGlassOut(Strict):
    grant_id: int
    alert_id: int
    study_instance_uid: str
    expires_at: dt.datetime


class AlertOut(Strict):
    id: int
    kind: str
    created_at: dt.datetime
    username: str
    institution: str | None
    owner_institution: str
    study_instance_uid: str
    reason: str
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None


@router.post("/break-glass", response_model=BreakGlassOut)
def break_glass(body: BreakGlassIn, who: Caller, reg: Reg, request: Request) -> BreakGlassOut:
    """Emergency access to another institution's study for the caller alone, for
    `break_glass_hours`. The reason is required, audited and raises an alert."""
    uid = body.study_instance_uid
    study = StudyFacts(uid, reg.study_institution(uid))
    access.require(access.may_break_glass(who, study))  # another institution's, known
    owner = cast(str, study.owner)  # may_break_glass refuses a study of no known owner
    settings = request.app.state.settings
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=settings.break_glass_hours)
    grant_id = reg.session.execute(  # this user's live break-glass grant: new or extended
        grant_model.upsert(
            study_instance_uid=uid,
            owner_institution=owner,
            institution_code=who.institution,
            grantee_subject=who.subject,
            kind="break-glass",
            purpose="break-glass",
            granted_by=who.subject,
            expires_at=expires,
        )
    ).scalar_one()
    alert = Alert(
        kind="break-glass",
        actor=who.subject,
        username=who.username,
        institution=who.institution,
        owner_institution=owner,
        study_instance_uid=uid,
        reason_enc=get_pii().encrypt(body.reason, "alerts.reason"),
    )
    reg.session.add(alert)
    if settings.alert_webhook_url:  # posted by the node holding the outbox lease
        reg.session.flush()  # no personal data: ids and codes only
        payload = {"alert_id": alert.id, "kind": "break-glass", "owner": owner}
        outbox.enqueue(reg.session, "break-glass", payload)
    reg.session.commit()
    request.state.audit_resource = f"study:{uid}"
    request.state.audit_purpose = "break-glass"
    log.warning(
        "ALERT %s break-glass by %s of %s on a study of %s",
        alert.id,
        who.subject,
        who.institution,
        owner,
    )
    return BreakGlassOut(
        grant_id=grant_id, alert_id=alert.id, study_instance_uid=uid, expires_at=expires
    )


def _out(row: Alert) -> AlertOut:
    return AlertOut(
        id=row.id,
        kind=row.kind,
        created_at=row.created_at,
        username=row.username,
        institution=row.institution,
        owner_institution=row.owner_institution,
        study_instance_uid=row.study_instance_uid,
        reason=get_pii().decrypt(row.reason_enc, "alerts.reason"),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=row.acknowledged_at,
    )


@router.get("/alerts", response_model=list[AlertOut])
def alerts(
    who: Caller,
    reg: Reg,
    since: AwareDatetime | None = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    """Alerts, newest first; `open=true` leaves out acknowledged ones."""
    seen = access.require(access.may_see_alerts(who))
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if not access.unconfined(seen):  # else every alert
        query = query.where(Alert.owner_institution == access.confined_to(seen))
    if since is not None:
        query = query.where(Alert.created_at >= since)
    if open_only:
        query = query.where(Alert.acknowledged_at.is_(None))
    return [_out(row) for row in reg.session.scalars(query)]


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut)
def acknowledge(
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Caller, reg: Reg
) -> AlertOut:
    """Mark an alert as reviewed (who and when are kept)."""
    access.require(access.may_see_alerts(who))
    row = reg.session.get(Alert, alert_id, with_for_update=True)
    if row is None or not access.may_see_alert(who, row.owner_institution):
        raise NotFound("no such alert")
    if row.acknowledged_at is None:
        row.acknowledged_by = who.username
        row.acknowledged_at = dt.datetime.now(dt.UTC)
    reg.session.commit()
    return _out(row)
