"""The fleet registry: which hospital gateways exist, what they run, their latest heartbeat.

Who an edge is (trusted): the gateway id is the access token's client (`azp`) and the
institution its `institution` claim, both set by Keycloak for the gateway's service account
(realm role `gateway`, client credentials); the edge sends neither. Its first authenticated
call registers it. Heartbeat bodies are the edge's own word (versions, queue, disk, ...):
stored and shown, never used for an access decision.

Operators: platform admins see and act on every gateway, hospital admins on their own
institution's only (another's is 404, as if it did not exist); the decision is
access.may_use_console's, and every operator function here asks it first.

Edge paths (heartbeat, registration) are async on the API's psycopg pool, one statement
each; operator paths are plain functions of a SQLAlchemy session.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ..config import get_settings
from ..errors import Forbidden, NotFound
from ..models.fleet import FleetGateway
from ..security.auth import Principal
from . import access
from .decision import Decision
from .fleet_stale import is_stale

log = logging.getLogger(__name__)
Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")
# a hospital gateway's service-account client, as auth/provision.py names them; no other
# client (imgcloud-web, a stray role grant) names a gateway
GATEWAY_ID = re.compile(r"^gateway-[a-z0-9][a-z0-9._-]{0,55}$")
Kind = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")]
# what Orthanc and its plugins say of themselves (a plugin may give no version: "")
Loose = Annotated[str, Field(pattern=r"^[A-Za-z0-9._+~ ()-]{0,64}$")]
Count = Annotated[int, Field(ge=0, le=2**53)]


class Heartbeat(BaseModel):
    """An edge's heartbeat (no personal data: versions, counts, kinds, times). Unknown
    fields are refused (422); every field but software_version may be missing, so an
    edge one release behind, which does not send a newer field yet, is still served."""

    model_config = ConfigDict(extra="forbid")
    software_version: Version
    orthanc_version: Loose | None = None
    plugins: dict[Kind, Loose] = Field(default_factory=dict, max_length=32)
    uptime_s: float | None = Field(default=None, ge=0, le=1e10)
    queue_depth: Count | None = None
    oldest_undelivered_age_s: float | None = Field(default=None, ge=0, le=1e10)
    failing_deliveries: Count | None = None
    failure_reasons: dict[Kind, Count] = Field(default_factory=dict, max_length=32)
    last_delivery_at: AwareDatetime | None = None
    disk_free_bytes: Count | None = None
    cert_expiry: dict[Kind, AwareDatetime] = Field(default_factory=dict, max_length=16)
    error_counts: dict[Kind, Count] = Field(default_factory=dict, max_length=32)
    rules_version: int | None = Field(default=None, ge=0, le=2**31 - 1)
    release: Version | None = None


@dataclass(frozen=True)
class Edge:
    """The calling gateway, as its token says (see the module)."""

    gateway_id: str
    institution: str


def edge_of(who: Principal) -> Edge:
    """The gateway a call comes from: a hospital's gateway account (access.py decides),
    named by its token's client id; refused (403) without one of the expected form."""
    decision = access.require(access.may_report_edge_events(who))
    client = who.client_id
    if not GATEWAY_ID.match(client):
        raise Forbidden("the token names no gateway client (azp)")
    return Edge(client, access.confined_to(decision))


HEARTBEAT_SQL = """
INSERT INTO fleet_gateways AS g (gateway_id, institution, last_heartbeat_at, interval_s,
    heartbeats, software_version, release, heartbeat, rules_applied)
VALUES (%(gateway_id)s, %(institution)s, now(), %(interval_s)s, 1, %(software_version)s,
    %(release)s, %(heartbeat)s, %(rules_version)s)
ON CONFLICT (gateway_id) DO UPDATE SET
    last_heartbeat_at = now(),
    interval_s = EXCLUDED.interval_s, heartbeats = g.heartbeats + 1,
    software_version = EXCLUDED.software_version, release = EXCLUDED.release,
    heartbeat = EXCLUDED.heartbeat,
    rules_applied = COALESCE(EXCLUDED.rules_applied, g.rules_applied)
WHERE g.institution = EXCLUDED.institution  -- a gateway never moves to another institution
RETURNING g.rules_latest, (SELECT u.release FROM fleet_upgrades u WHERE u.id = g.upgrade_id)
"""

REGISTER_SQL = """
INSERT INTO fleet_gateways (gateway_id, institution, interval_s)
VALUES (%(gateway_id)s, %(institution)s, %(interval_s)s)
ON CONFLICT (gateway_id) DO NOTHING
"""


async def heartbeat(pool: AsyncConnectionPool, edge: Edge, body: Heartbeat) -> dict[str, Any]:
    """Store the edge's latest state (its one row, upserted) and answer what it should
    know: the newest rules version central holds for it (and whether to keep a long poll
    for rules waiting), an ordered upgrade, the interval."""
    settings = get_settings()
    interval = settings.fleet_heartbeat_interval_s
    params = {
        "gateway_id": edge.gateway_id,
        "institution": edge.institution,
        "interval_s": interval,
        "software_version": body.software_version,
        "release": body.release,
        "heartbeat": Jsonb(body.model_dump(mode="json", exclude_unset=True)),  # as sent
        "rules_version": body.rules_version,
    }
    async with pool.connection() as conn:
        row = await (await conn.execute(HEARTBEAT_SQL, params)).fetchone()
    if row is None:  # registered to another institution: a Keycloak mapping gone wrong
        log.warning(
            "heartbeat refused: gateway %s is registered to another institution", edge.gateway_id
        )
        raise Forbidden("this gateway is registered to another institution")
    rules_latest, upgrade = row
    return {
        "rules_version": rules_latest,
        "upgrade": {"release": upgrade} if upgrade else None,
        "interval_s": interval,
        "rules_long_poll": settings.fleet_rules_long_poll,
    }


async def register(pool: AsyncConnectionPool, edge: Edge) -> None:
    """Register the gateway if this is its first call (any edge call does it)."""
    params = {**edge.__dict__, "interval_s": get_settings().fleet_heartbeat_interval_s}
    async with pool.connection() as conn:
        await conn.execute(REGISTER_SQL, params)


# --- operators -----------------------------------------------------------------------


class GatewayOut(BaseModel):
    gateway_id: str
    institution: str
    keycloak_client: str  # the gateway's service-account client (the same as its id)
    group: str | None
    software_version: str | None
    release: str | None
    rules_latest: int | None = Field(description="the newest version central holds")
    rules_applied: int | None = Field(description="the version the edge has in force")
    rules_refused: int | None
    rules_refused_reason: str | None
    template: str | None
    first_seen: dt.datetime
    last_heartbeat_at: dt.datetime | None
    interval_s: float
    stale: bool
    upgrade_id: int | None
    heartbeat: dict[str, Any] | None = Field(description="the latest heartbeat's body")


def operator_scope(who: Principal) -> Decision:
    """What an operator may see: every gateway, or one institution's (access.py)."""
    return access.require(access.may_use_console(who))


def visible(query: Q, scope: Decision) -> Q:
    """A query of gateways narrowed to the operator's scope."""
    if access.unconfined(scope):
        return query
    return query.where(FleetGateway.institution == access.confined_to(scope))


def gateway_row(
    session: Session, who: Principal, gateway_id: str, lock: bool = False
) -> FleetGateway:
    """A gateway the operator may act on, or 404 (also for another institution's)."""
    query = visible(
        select(FleetGateway).where(FleetGateway.gateway_id == gateway_id), operator_scope(who)
    )
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound("no such gateway")
    return row


def out(row: FleetGateway, now: dt.datetime | None = None) -> GatewayOut:
    now = now or dt.datetime.now(dt.UTC)
    last = row.last_heartbeat_at or row.first_seen
    missed = get_settings().fleet_stale_after_missed
    return GatewayOut(
        gateway_id=row.gateway_id,
        institution=row.institution,
        keycloak_client=row.gateway_id,
        group=row.group,
        software_version=row.software_version,
        release=row.release,
        rules_latest=row.rules_latest,
        rules_applied=row.rules_applied,
        rules_refused=row.rules_refused,
        rules_refused_reason=row.rules_refused_reason,
        template=row.template,
        first_seen=row.first_seen,
        last_heartbeat_at=row.last_heartbeat_at,
        interval_s=row.interval_s,
        # what the heartbeats say now; row.stale is the loop's alert state, which follows
        # within a check interval (a gateway back seconds ago is not shown stale meanwhile)
        stale=is_stale(last, now, row.interval_s, missed),
        upgrade_id=row.upgrade_id,
        heartbeat=row.heartbeat,
    )


def list_gateways(session: Session, who: Principal) -> list[GatewayOut]:
    """The gateways the operator may see: stale ones first, then by institution and id."""
    rows = session.scalars(visible(select(FleetGateway), operator_scope(who))).all()
    now = dt.datetime.now(dt.UTC)
    views = [out(row, now) for row in rows]
    return sorted(views, key=lambda g: (not g.stale, g.institution, g.gateway_id))


def get_gateway(session: Session, who: Principal, gateway_id: str) -> GatewayOut:
    return out(gateway_row(session, who, gateway_id))


def set_group(session: Session, who: Principal, gateway_id: str, group: str | None) -> GatewayOut:
    """Label a gateway ("canary", ...) for upgrade campaigns; None removes the label."""
    row = gateway_row(session, who, gateway_id, lock=True)
    row.group = group
    session.commit()
    return out(row)
