"""The gateway fleet (#15): the edges' heartbeats, configuration and upgrade polls, and
the operators' registry, rules documents and upgrade campaigns (contract:
docs of #15, /api/v1/fleet/...). Thin: the services decide (fleet_registry: who an edge
is and what an operator sees; access.py underneath); every call is audited by the
middleware, with the gateway as its resource.

Edge calls name no gateway: it is the token's client (fleet_registry.edge_of)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator
from sqlalchemy.orm import Session

from ...config import get_settings
from ...db import get_session
from ...schemas import Strict
from ...security.auth import Principal
from ...services import fleet_registry as registry
from ...services import fleet_rules as rules
from ...services import fleet_stale as stale
from ...services import fleet_upgrades as upgrades
from ...services.fleet_watch import rules_watch
from ..deps import Caller, authenticate

router = APIRouter(prefix="/v1/fleet", tags=["fleet"])
DB = Annotated[Session, Depends(get_session)]
GatewayId = Annotated[str, Path(pattern=registry.GATEWAY_ID.pattern)]
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]


async def _async_caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return authenticate(request, authorization)


AsyncCaller = Annotated[Principal, Depends(_async_caller)]


def _about(request: Request, gateway_id: str) -> None:
    request.state.audit_resource = f"gateway:{gateway_id}"


def _invalid(exc: rules.RulesInvalid) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": exc.problems})


# --- the edges -----------------------------------------------------------------------


@router.post("/heartbeat")
async def heartbeat(body: registry.Heartbeat, who: AsyncCaller, request: Request) -> dict[str, Any]:
    """The edge's latest state (stored, one row per gateway); the answer says the newest
    rules version central holds for it, an ordered upgrade and the interval to keep."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    return await registry.heartbeat(request.app.state.pool, edge, body)


@router.get("/rules", response_model=None)
async def rules_poll(
    who: AsyncCaller,
    request: Request,
    have: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    wait: Annotated[float, Query(ge=0, le=25)] = 0,
) -> Response | dict[str, Any]:
    """The newest rules document above `have`, as soon as central holds one; 204 after
    `wait` seconds otherwise (no database connection is held while waiting)."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    dsn = get_settings().database_url.get_secret_value().replace("+psycopg", "", 1)
    watch = rules_watch(dsn)
    event = watch.register(edge.gateway_id)
    deadline = time.monotonic() + min(wait, get_settings().fleet_long_poll_max_s)
    try:
        while True:
            listening = watch.listening_as()  # before the check: see listening_as
            found = await rules.newer_rules(request.app.state.pool, edge, have)
            if found is not None:
                return {"version": found[0], "document": found[1]}
            left = deadline - time.monotonic()
            if left <= 0:
                return Response(status_code=204)
            woken = await watch.wait(event, left)
            if not woken and listening is not None and watch.listening_as() == listening:
                return Response(status_code=204)  # nothing announced: no need to look
    finally:
        watch.unregister(edge.gateway_id, event)


class RulesReport(Strict):
    version: int = Field(ge=1, le=2**31 - 1)
    status: Literal["applied", "refused"]
    reason: str | None = Field(default=None, max_length=500)


@router.post("/rules/report", status_code=204)
def rules_report(body: RulesReport, who: Caller, session: DB, request: Request) -> Response:
    """The edge applied a version, or refused it (the reason is kept)."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    rules.report(session, edge, body.version, body.status, body.reason)
    return Response(status_code=204)


@router.get("/upgrade", response_model=None)
def upgrade_poll(who: Caller, session: DB, request: Request) -> Response | dict[str, Any]:
    """The release ordered for this gateway (with its bundle's SHA-256 and size), or 204."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    found = upgrades.ordered(session, edge)
    return found if found is not None else Response(status_code=204)


@router.get("/releases/{release}/bundle")
def release_bundle(
    release: Annotated[str, Path(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")],
    who: Caller,
    session: DB,
    request: Request,
) -> Response:
    """A release's signed bundle, for a hospital's gateway."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    return Response(upgrades.bundle(session, release), media_type="application/octet-stream")


class UpgradeReport(Strict):
    release: str = Field(max_length=64)
    status: upgrades.Reported
    detail: str | None = Field(default=None, max_length=500)


@router.post("/upgrade/report", status_code=204)
def upgrade_report(body: UpgradeReport, who: Caller, session: DB, request: Request) -> Response:
    """The edge's progress on its ordered upgrade."""
    edge = registry.edge_of(who)
    _about(request, edge.gateway_id)
    upgrades.report(session, edge, body.release, body.status, body.detail)
    return Response(status_code=204)


# --- the operators -------------------------------------------------------------------


@router.get("/gateways", response_model=list[registry.GatewayOut])
def gateways(who: Caller, session: DB) -> list[registry.GatewayOut]:
    """The gateways the caller may see, stale ones first, then by institution."""
    return registry.list_gateways(session, who)


@router.get("/gateways/{gateway_id}", response_model=registry.GatewayOut)
def gateway(
    gateway_id: GatewayId, who: Caller, session: DB, request: Request
) -> registry.GatewayOut:
    _about(request, gateway_id)
    return registry.get_gateway(session, who, gateway_id)


class DocumentIn(Strict):
    document: dict[str, Any]


@router.put("/gateways/{gateway_id}/rules", status_code=201, response_model=None)
def put_rules(
    gateway_id: GatewayId, body: DocumentIn, who: Caller, session: DB, request: Request
) -> dict[str, int] | JSONResponse:
    """A new version of the gateway's own rules document (validated with the edge's
    schema; central sets `version`); 422 naming each problem, and nothing stored."""
    _about(request, gateway_id)
    try:
        return {"version": rules.put_rules(session, who, gateway_id, body.document)}
    except rules.RulesInvalid as exc:
        return _invalid(exc)


@router.get("/gateways/{gateway_id}/rules/history", response_model=list[rules.RulesVersionOut])
def rules_history(
    gateway_id: GatewayId,
    who: Caller,
    session: DB,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[rules.RulesVersionOut]:
    _about(request, gateway_id)
    return rules.rules_history(session, who, gateway_id, limit)


@router.put("/templates/{name}", response_model=None)
def put_template(
    name: Name, body: DocumentIn, who: Caller, session: DB, request: Request
) -> dict[str, Any] | JSONResponse:
    """Create or replace a template (platform admins): a new version for each attached
    gateway, or 422 and nothing changes."""
    request.state.audit_resource = f"fleet-template:{name}"
    try:
        return {"versions": rules.put_template(session, who, name, body.document)}
    except rules.RulesInvalid as exc:
        return _invalid(exc)


class TemplateIn(Strict):
    template: str | None = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Stored as given (nulls included): as bounded as a rules document (review L8)."""
        if len(json.dumps(value)) > rules.MAX_DOCUMENT_BYTES:
            raise ValueError(f"longer than {rules.MAX_DOCUMENT_BYTES} bytes")
        return value


@router.put("/gateways/{gateway_id}/template", response_model=None)
def set_template(
    gateway_id: GatewayId, body: TemplateIn, who: Caller, session: DB, request: Request
) -> dict[str, int | None] | JSONResponse:
    _about(request, gateway_id)
    try:
        version = rules.set_template(session, who, gateway_id, body.template, body.overrides)
    except rules.RulesInvalid as exc:
        return _invalid(exc)
    return {"version": version}


class GroupIn(Strict):
    group: str | None = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@router.put("/gateways/{gateway_id}/group", response_model=registry.GatewayOut)
def set_group(
    gateway_id: GatewayId, body: GroupIn, who: Caller, session: DB, request: Request
) -> registry.GatewayOut:
    _about(request, gateway_id)
    return registry.set_group(session, who, gateway_id, body.group)


@router.get("/alerts", response_model=list[stale.FleetAlertOut])
def alerts(
    who: Caller,
    session: DB,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[stale.FleetAlertOut]:
    """Gateway alerts, newest first; open=true: not cleared nor acknowledged."""
    return stale.open_alerts(session, who, open_only, limit)


@router.post("/alerts/{alert_id}/ack", response_model=stale.FleetAlertOut)
def ack_alert(
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Caller, session: DB, request: Request
) -> stale.FleetAlertOut:
    request.state.audit_resource = f"fleet-alert:{alert_id}"
    return stale.ack_alert(session, who, alert_id)


@router.post("/releases", status_code=201)
async def upload_release(request: Request, who: Caller, session: DB) -> dict[str, str]:
    """The signed bundle as the body (platform admins); refused unless its signature
    checks with the release key."""
    data = await request.body()
    request.state.audit_resource = "fleet-release:(refused)"  # until it is known
    release = await run_in_threadpool(upgrades.upload_release, session, who, data)
    request.state.audit_resource = f"fleet-release:{release}"
    return {"release": release}


@router.get("/releases")
def releases(who: Caller, session: DB) -> list[dict[str, Any]]:
    return upgrades.list_releases(session, who)


class UpgradeIn(Strict):
    release: str = Field(max_length=64)
    target: upgrades.Target


@router.post("/upgrades", status_code=201)
def start_upgrade(body: UpgradeIn, who: Caller, session: DB, request: Request) -> dict[str, int]:
    """Order a release for gateways named, a group or all (within the caller's scope)."""
    request.state.audit_resource = f"fleet-release:{body.release}"  # a refusal names it
    campaign = upgrades.start_upgrade(session, who, body.release, body.target)
    request.state.audit_resource = f"fleet-upgrade:{campaign}"
    return {"id": campaign}


@router.get("/upgrades/{upgrade_id}", response_model=upgrades.UpgradeOut)
def upgrade_status(
    upgrade_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Caller, session: DB, request: Request
) -> upgrades.UpgradeOut:
    request.state.audit_resource = f"fleet-upgrade:{upgrade_id}"
    return upgrades.upgrade_status(session, who, upgrade_id)
