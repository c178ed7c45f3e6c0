"""The gateway fleet (#15): the registry of hospital gateways with the latest state each
reported, their rules documents (versioned, with author and time), rules templates, stale
alerts, signed edge releases and upgrade campaigns.

A gateway is named by its Keycloak service-account client (`gateway-h0001`: the token's
`azp`), which the edge cannot choose; its institution is the token's `institution` claim.
Heartbeats are not kept as a history: each one overwrites its gateway's one row
(`heartbeat` holds the latest body: versions, queue, deliveries, disk, certificates, error
counts; no personal data), so a gateway costs one row whatever its interval. The table is
created with fillfactor 50 and no index on what a heartbeat changes, so the update is a
HOT update (no index writes, dead tuples pruned on the page).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class FleetGateway(Base):
    """One hospital gateway: registered on its first authenticated call, updated by each
    heartbeat (one row, upserted)."""

    __tablename__ = "fleet_gateways"
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)

    gateway_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the token's azp
    institution: Mapped[str] = mapped_column(String(16), index=True)  # the token's claim
    group: Mapped[str | None] = mapped_column(String(64))  # "canary", ...
    first_seen: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # the latest heartbeat: when, what central told the edge (interval_s), and its body
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    interval_s: Mapped[float] = mapped_column(Float, server_default="30")
    heartbeats: Mapped[int] = mapped_column(BigInteger, server_default="0")
    software_version: Mapped[str | None] = mapped_column(String(64))
    release: Mapped[str | None] = mapped_column(String(64))
    heartbeat: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # rules: the newest version central holds, the one the edge last applied / refused
    rules_latest: Mapped[int | None] = mapped_column(Integer)
    rules_applied: Mapped[int | None] = mapped_column(Integer)
    rules_refused: Mapped[int | None] = mapped_column(Integer)
    rules_refused_reason: Mapped[str | None] = mapped_column(String(500))
    template: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("fleet_templates.name", ondelete="RESTRICT")
    )
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # the upgrade campaign this gateway is to carry out now (None: nothing ordered)
    upgrade_id: Mapped[int | None] = mapped_column(BigInteger)
    # set and cleared by the staleness loop only (with the alert it raises and clears)
    stale: Mapped[bool] = mapped_column(Boolean, server_default="false")
    stale_since: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class FleetRules(Base):
    """One version of one gateway's rules document, as central issued it (the edge's
    schema, orthanc-plugins/imgcloud/edge_rules.py, validated it before it was stored)."""

    __tablename__ = "fleet_rules"
    __table_args__ = (UniqueConstraint("gateway_id", "version"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    gateway_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("fleet_gateways.gateway_id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    author: Mapped[str] = mapped_column(String(128))  # the operator's username
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    source: Mapped[str] = mapped_column(String(80))  # "direct" | "template:<name>"
    # what the edge reported about this version: applied | refused (with its reason)
    reported: Mapped[str | None] = mapped_column(String(16))
    reported_reason: Mapped[str | None] = mapped_column(String(500))
    reported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class FleetTemplate(Base):
    """A rules template: deep-merged with each attached gateway's overrides."""

    __tablename__ = "fleet_templates"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class FleetAlert(Base):
    """A gateway gone stale (kind "gateway-stale"): raised by the staleness loop, cleared
    by it when heartbeats return, acknowledged by an operator. Kept apart from `alerts`
    (break-glass), whose rows are about a person's access to a study: actor, username,
    study UID and an encrypted reason, none of which a gateway alert has."""

    __tablename__ = "fleet_alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    gateway_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("fleet_gateways.gateway_id", ondelete="CASCADE"), index=True
    )
    institution: Mapped[str] = mapped_column(String(16), index=True)
    raised_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    cleared_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class FleetRelease(Base):
    """A signed edge release bundle, checked at upload (signature over its manifest).
    The bytes are kept here (bytea): a bundle is plugin code, well under the request
    limit, and PostgreSQL's backups and replicas then hold it with everything else."""

    __tablename__ = "fleet_releases"

    release: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))  # of the bundle file, hex
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONB)
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_by: Mapped[str] = mapped_column(String(128))
    uploaded_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class FleetUpgrade(Base):
    """An upgrade campaign: one release ordered for some gateways."""

    __tablename__ = "fleet_upgrades"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    release: Mapped[str] = mapped_column(
        String(64), ForeignKey("fleet_releases.release", ondelete="RESTRICT")
    )
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)  # as asked: gateways, group, all
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class FleetUpgradeTarget(Base):
    """One gateway of a campaign and the status its edge last reported."""

    __tablename__ = "fleet_upgrade_targets"

    upgrade_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("fleet_upgrades.id", ondelete="CASCADE"), primary_key=True
    )
    gateway_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("fleet_gateways.gateway_id", ondelete="CASCADE"), primary_key=True
    )
    # ordered | downloading | installed | healthy | rolled_back | refused | superseded
    status: Mapped[str] = mapped_column(String(16), server_default="ordered")
    detail: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
