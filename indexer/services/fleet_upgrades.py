"""Edge releases and upgrade campaigns.

A release is uploaded by a platform administrator as the signed bundle itself
(imgcloud.release_bundle): central checks it with the release public key
(INDEXER_FLEET_RELEASE_PUBLIC_KEY) before storing anything, so an unsigned or tampered
bundle never reaches an edge from here (the edge checks again before it unpacks). The
release name is the signed manifest's; the bytes are kept in PostgreSQL (bytea).

A campaign orders a release for gateways named one by one, a group, or all, within the
operator's scope (hospital admins: their institution's gateways). Each gateway carries
out its newest campaign (`fleet_gateways.upgrade_id`, answered in its heartbeat); the
edge reports downloading / installed / healthy / rolled_back / refused, and the last
three end its part. A newer campaign supersedes an unfinished older one for a gateway.
A report about a release of an earlier campaign of the gateway (e.g. a release found
tampered at a later boot, review M4) updates that campaign's row.

Every release carries a number in its signed manifest (`sequence`, review M3): edges
refuse one below the highest they ran healthy, and central refuses (422) to order a
release numbered below what a targeted gateway runs, or one without a number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from imgcloud import release_bundle
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import get_settings
from ..errors import Conflict, Forbidden, IndexerError, InvalidRecord, NotFound
from ..models.fleet import FleetGateway, FleetRelease, FleetUpgrade, FleetUpgradeTarget
from ..security.auth import Principal
from . import access
from .fleet_registry import GATEWAY_ID, Edge, operator_scope, visible

FINAL = frozenset({"healthy", "rolled_back", "refused"})
Reported = Literal["downloading", "installed", "healthy", "rolled_back", "refused"]


class ReleaseUnverifiable(IndexerError):
    """Central has no release public key: it stores no bundle it could not check."""

    status = 503


def upload_release(session: Session, who: Principal, data: bytes) -> str:
    """Check a signed bundle and store it (platform admins): its release name."""
    if not access.unconfined(operator_scope(who)):
        raise Forbidden("releases are uploaded by platform administrators")
    settings = get_settings()
    if settings.fleet_release_public_key is None:
        raise ReleaseUnverifiable("no release public key is configured at central")
    if len(data) > settings.fleet_release_max_bytes:
        raise InvalidRecord("body", f"a bundle is at most {settings.fleet_release_max_bytes} bytes")
    key = release_bundle.load_public_key(settings.fleet_release_public_key.read_bytes())
    try:
        manifest = release_bundle.verify_bundle(data, key)
    except release_bundle.BundleRefused as exc:
        raise InvalidRecord("body", f"bundle refused: {exc}") from None
    session.add(
        FleetRelease(
            release=manifest.release,
            sha256=release_bundle.sha256_hex(data),
            size=len(data),
            manifest=manifest.model_dump(mode="json"),
            bundle=data,
            uploaded_by=who.username,
        )
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"release {manifest.release} is already uploaded") from None
    return manifest.release


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gateways: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> Target:
        if sum(x is not None for x in (self.gateways, self.group, self.all)) != 1:
            raise ValueError("target: give exactly one of gateways, group, all")
        if self.gateways and not all(GATEWAY_ID.match(g) for g in self.gateways):
            raise ValueError("target.gateways: gateway ids like gateway-h0001")
        return self


def start_upgrade(session: Session, who: Principal, release: str, target: Target) -> int:
    """Order `release` for the target's gateways in the operator's scope: the campaign id.
    A gateway named but out of scope (or unknown) is 404; a group or `all` that matches
    no gateway in scope is 422."""
    scope = operator_scope(who)
    if session.get(FleetRelease, release) is None:
        raise NotFound("no such release")
    query = visible(select(FleetGateway), scope).with_for_update()
    if target.gateways is not None:
        query = query.where(FleetGateway.gateway_id.in_(target.gateways))
    elif target.group is not None:
        query = query.where(FleetGateway.group == target.group)
    rows = session.scalars(query.order_by(FleetGateway.gateway_id)).all()
    if target.gateways is not None and len(rows) != len(set(target.gateways)):
        raise NotFound("no such gateway")
    if not rows:
        raise InvalidRecord("target", "no gateway matches")
    _no_downgrade(session, release, rows)
    campaign = FleetUpgrade(
        release=release, target=target.model_dump(exclude_none=True), created_by=who.username
    )
    session.add(campaign)
    session.flush()
    pending = [row.upgrade_id for row in rows if row.upgrade_id is not None]
    if pending:  # an unfinished older campaign of these gateways: superseded
        session.execute(
            update(FleetUpgradeTarget)
            .where(FleetUpgradeTarget.upgrade_id.in_(pending))
            .where(FleetUpgradeTarget.gateway_id.in_([row.gateway_id for row in rows]))
            .where(FleetUpgradeTarget.status.not_in(FINAL))
            .values(status="superseded", updated_at=dt.datetime.now(dt.UTC))
        )
    for row in rows:
        session.add(FleetUpgradeTarget(upgrade_id=campaign.id, gateway_id=row.gateway_id))
        row.upgrade_id = campaign.id
    session.commit()
    return campaign.id


def _sequence(manifest: dict[str, Any] | None) -> int | None:
    value = (manifest or {}).get("sequence")
    return value if isinstance(value, int) else None


def _no_downgrade(session: Session, release: str, rows: Sequence[FleetGateway]) -> None:
    """422 if `release` has no sequence (its edges would refuse it) or is numbered below
    the release a targeted gateway runs (by its last heartbeat; a release central does
    not hold, such as an edge's installed code, is not compared)."""
    names = {release, *(row.release for row in rows if row.release)}
    found = session.execute(
        select(FleetRelease.release, FleetRelease.manifest).where(FleetRelease.release.in_(names))
    )
    manifests: dict[str, dict[str, Any]] = {name: manifest for name, manifest in found}
    ordered = _sequence(manifests.get(release))
    if ordered is None:
        raise InvalidRecord("release", f"release {release} has no sequence: edges refuse it")
    ahead = [
        f"{row.gateway_id} runs {row.release}"
        for row in rows
        if row.release and (_sequence(manifests.get(row.release)) or 0) > ordered
    ]
    if ahead:
        raise InvalidRecord(
            "release",
            f"release {release} (sequence {ordered}) is older than what gateways run "
            f"({', '.join(ahead[:5])}{', ...' if len(ahead) > 5 else ''}): "
            "an edge refuses a downgrade",
        )


class TargetOut(BaseModel):
    gateway_id: str
    institution: str
    status: str
    detail: str | None
    updated_at: dt.datetime
    release_running: str | None = Field(description="the release its heartbeat names")


class UpgradeOut(BaseModel):
    id: int
    release: str
    target: dict[str, Any]
    created_by: str
    created_at: dt.datetime
    gateways: list[TargetOut]
    counts: dict[str, int]


def upgrade_status(session: Session, who: Principal, upgrade_id: int) -> UpgradeOut:
    """A campaign with each gateway's status, those in the operator's scope only (a
    campaign with none of them is 404)."""
    scope = operator_scope(who)
    campaign = session.get(FleetUpgrade, upgrade_id)
    rows = session.execute(
        visible(
            select(FleetUpgradeTarget, FleetGateway)
            .join(FleetGateway, FleetGateway.gateway_id == FleetUpgradeTarget.gateway_id)
            .where(FleetUpgradeTarget.upgrade_id == upgrade_id)
            .order_by(FleetUpgradeTarget.gateway_id),
            scope,
        )
    ).all()
    if campaign is None or not rows:
        raise NotFound("no such upgrade")
    gateways = [
        TargetOut(
            gateway_id=t.gateway_id,
            institution=g.institution,
            status=t.status,
            detail=t.detail,
            updated_at=t.updated_at,
            release_running=g.release,
        )
        for t, g in rows
    ]
    counts: dict[str, int] = {}
    for item in gateways:
        counts[item.status] = counts.get(item.status, 0) + 1
    return UpgradeOut(
        id=campaign.id,
        release=campaign.release,
        # a hospital admin sees the campaign as it concerns their gateways: its target may
        # name other institutions' gateways, which are not theirs to know (review L5)
        target=campaign.target
        if access.unconfined(scope)
        else {"gateways": [item.gateway_id for item in gateways]},
        created_by=campaign.created_by,
        created_at=campaign.created_at,
        gateways=gateways,
        counts=counts,
    )


def list_releases(session: Session, who: Principal) -> list[dict[str, Any]]:
    """Uploaded releases, newest first (no bytes)."""
    operator_scope(who)
    rows = session.execute(
        select(
            FleetRelease.release, FleetRelease.sha256, FleetRelease.size, FleetRelease.uploaded_at
        ).order_by(FleetRelease.uploaded_at.desc())
    ).all()
    return [r._asdict() for r in rows]


# --- the edge ------------------------------------------------------------------------


def ordered(session: Session, edge: Edge) -> dict[str, Any] | None:
    """What the gateway is to install: release, sha256 and size of its bundle, or None."""
    row = session.execute(
        select(FleetRelease.release, FleetRelease.sha256, FleetRelease.size)
        .join(FleetUpgrade, FleetUpgrade.release == FleetRelease.release)
        .join(FleetGateway, FleetGateway.upgrade_id == FleetUpgrade.id)
        .where(FleetGateway.gateway_id == edge.gateway_id)
    ).first()
    return row._asdict() if row else None


def bundle(session: Session, release: str) -> bytes:
    """A release's bundle for any hospital gateway (signed code, no secret in it)."""
    data = session.scalar(select(FleetRelease.bundle).where(FleetRelease.release == release))
    if data is None:
        raise NotFound("no such release")
    return data


def report(
    session: Session, edge: Edge, release: str, status: Reported, detail: str | None
) -> None:
    """The edge's progress on its current campaign for `release`; or, when that is not
    its current campaign, a later word on the newest earlier campaign of this gateway for
    `release` (e.g. found tampered at a boot long after it was healthy), whose row it
    updates. 404 when the gateway never had `release` ordered."""
    gateway = session.get(FleetGateway, edge.gateway_id, with_for_update=True)
    if gateway is None:
        raise NotFound("no upgrade to this release is ordered for this gateway")
    current = session.get(FleetUpgrade, gateway.upgrade_id) if gateway.upgrade_id else None
    if current is not None and current.release == release:
        campaign_id: int | None = current.id
        if status in FINAL:
            gateway.upgrade_id = None
    else:
        campaign_id = session.scalar(
            select(FleetUpgrade.id)
            .join(FleetUpgradeTarget, FleetUpgradeTarget.upgrade_id == FleetUpgrade.id)
            .where(FleetUpgradeTarget.gateway_id == edge.gateway_id)
            .where(FleetUpgrade.release == release)
            .order_by(FleetUpgrade.id.desc())
            .limit(1)
        )
    if campaign_id is None:
        raise NotFound("no upgrade to this release is ordered for this gateway")
    session.execute(
        update(FleetUpgradeTarget)
        .where(FleetUpgradeTarget.upgrade_id == campaign_id)
        .where(FleetUpgradeTarget.gateway_id == edge.gateway_id)
        .values(status=status, detail=detail, updated_at=dt.datetime.now(dt.UTC))
    )
    session.commit()
