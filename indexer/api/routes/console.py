"""The operator console (#15): server-rendered pages under /console, in Chinese with
English, for platform administrators (every gateway) and hospital administrators (their
institution's gateways only).

What is trusted, and why: the caller comes from the console's login (web/session.py:
a Keycloak token in an HttpOnly, SameSite=Strict cookie, verified on every request, and
for every POST an Origin of the gateway's own pages); `access.may_use_console` admits
the area. What an operator then sees or changes is decided by the fleet services these
pages call (services/fleet_*.py, whose scope is that same decision) and, for the
reconciliation list, by `access.may_list_unmatched`: a gateway, alert or campaign outside
the scope is 404, as in the API. The pages never decide on their own. Every request is
audited by the audit middleware, with the route's name (`console_*`) as its action.
Plain HTML forms: the pages run no script (the CSP forbids inline script).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from ...db import get_session
from ...errors import InvalidRecord, NotFound
from ...security.auth import Principal
from ...services import access, console_views, fleet_registry, fleet_rules, fleet_stale
from ...services import fleet_upgrades as upgrades
from ...web.pages import render
from ...web.session import WebLogin
from ..deps import Reg

AREA = "/console"
LOGIN = WebLogin(AREA, access.may_use_console)
router = APIRouter(include_in_schema=False)
router.include_router(LOGIN.router())

Who = Annotated[Principal, Depends(LOGIN.caller)]
Db = Annotated[Session, Depends(get_session)]
GatewayId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
MAX_DRAFT = 64 * 1024  # fleet_rules refuses longer documents anyway


def _page(request: Request, template: str, who: Principal, status: int = 200, **ctx: Any) -> Any:
    return render(request, template, who, area=AREA, status_code=status, **ctx)


def _back(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


@router.get(AREA, name="console_root")
def root() -> Response:
    return _back(AREA + "/")


@router.get(AREA + "/", response_class=HTMLResponse, name="console_gateways")
def gateways(request: Request, who: Who, db: Db) -> Any:
    """Every gateway the operator may see, stale first; failing deliveries with reasons."""
    rows = [console_views.row(g) for g in fleet_registry.list_gateways(db, who)]
    alerts = fleet_stale.open_alerts(db, who)
    return _page(
        request,
        "console_gateways.html",
        who,
        rows=rows,
        failing=console_views.failing(rows),
        open_alerts=len(alerts),
        age=console_views.age,
    )


def _gateway_page(
    request: Request,
    who: Principal,
    db: Session,
    gateway_id: str,
    *,
    draft: str | None = None,
    problems: list[str] | None = None,
    diff: list[tuple[str, str]] | None = None,
    status: int = 200,
) -> Any:
    gateway = console_views.row(fleet_registry.get_gateway(db, who, gateway_id))
    history = fleet_rules.rules_history(db, who, gateway_id, limit=20)
    by_version = {v.version: v for v in history}
    # the version the edge reported applying, as central issued it (None: the edge runs a
    # document of its own, or none of central's yet)
    in_force = by_version.get(gateway.gateway.rules_applied or -1)
    latest = history[0] if history else None
    if draft is None:
        start = latest or in_force
        draft = console_views.pretty(console_views.without_version(start.document if start else {}))
    return _page(
        request,
        "console_gateway.html",
        who,
        status,
        row=gateway,
        history=history,
        in_force=in_force,
        latest=latest,
        draft=draft,
        problems=problems or [],
        diff=diff,
        age=console_views.age,
    )


@router.get(AREA + "/gateways/{gateway_id}", response_class=HTMLResponse, name="console_gateway")
def gateway_page(request: Request, gateway_id: GatewayId, who: Who, db: Db) -> Any:
    """One gateway: its heartbeat, its rules in force and their history, the editor."""
    return _gateway_page(request, who, db, gateway_id)


def _in_force_document(db: Session, who: Principal, gateway_id: str) -> dict[str, Any] | None:
    applied = fleet_registry.get_gateway(db, who, gateway_id).rules_applied
    if applied is None:
        return None
    try:
        return fleet_rules.rules_version(db, who, gateway_id, applied).document
    except NotFound:  # the edge's own local version: central holds no copy to diff against
        return None


@router.post(
    AREA + "/gateways/{gateway_id}/rules/preview",
    response_class=HTMLResponse,
    name="console_rules_preview",
)
def rules_preview(
    request: Request,
    gateway_id: GatewayId,
    who: Who,
    db: Db,
    document: Annotated[str, Form(max_length=MAX_DRAFT)],
) -> Any:
    """The draft's diff against the version in force, and the button that pushes it
    (nothing is stored yet)."""
    parsed, why = console_views.parse_draft(document)
    if parsed is None:
        return _gateway_page(
            request, who, db, gateway_id, draft=document, problems=[why], status=422
        )
    problems = fleet_rules.problems_of(fleet_rules.versioned(parsed, 1))
    diff = console_views.rules_diff(_in_force_document(db, who, gateway_id), parsed)
    return _gateway_page(
        request,
        who,
        db,
        gateway_id,
        draft=console_views.pretty(parsed),
        problems=[f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems],
        diff=diff,
        status=422 if problems else 200,
    )


@router.post(
    AREA + "/gateways/{gateway_id}/rules", response_class=HTMLResponse, name="console_rules_push"
)
def rules_push(
    request: Request,
    gateway_id: GatewayId,
    who: Who,
    db: Db,
    document: Annotated[str, Form(max_length=MAX_DRAFT)],
) -> Any:
    """Push the draft: a new version for the gateway (fleet_rules validates it with the
    edge's schema; an invalid one is shown again with each problem, nothing stored)."""
    parsed, why = console_views.parse_draft(document)
    if parsed is None:
        return _gateway_page(
            request, who, db, gateway_id, draft=document, problems=[why], status=422
        )
    try:
        version = fleet_rules.put_rules(db, who, gateway_id, parsed)
    except fleet_rules.RulesInvalid as invalid:
        db.rollback()
        problems = [f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in invalid.problems]
        return _gateway_page(
            request, who, db, gateway_id, draft=document, problems=problems, status=422
        )
    request.state.audit_resource = f"gateway:{gateway_id}/rules:{version}"
    return _back(f"{AREA}/gateways/{gateway_id}?pushed={version}")


@router.get(AREA + "/alerts", response_class=HTMLResponse, name="console_alerts")
def alerts(request: Request, who: Who, db: Db) -> Any:
    """Open gateway alerts (not cleared, not acknowledged), newest first."""
    rows = fleet_stale.open_alerts(db, who)
    return _page(request, "console_alerts.html", who, alerts=rows)


@router.post(AREA + "/alerts/{alert_id}/ack", name="console_alert_ack")
def alert_ack(
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], request: Request, who: Who, db: Db
) -> Response:
    """Acknowledge one gateway alert (who and when are kept)."""
    fleet_stale.ack_alert(db, who, alert_id)
    request.state.audit_resource = f"fleet-alert:{alert_id}"
    return _back(AREA + "/alerts")


@router.get(AREA + "/reconciliation", response_class=HTMLResponse, name="console_reconciliation")
def reconciliation(request: Request, who: Who, reg: Reg) -> Any:
    """Studies that match no exam: every institution's, or the hospital admin's own."""
    seen = access.require(access.may_use_console(who))
    institution = None if access.unconfined(seen) else access.confined_to(seen)
    access.require(access.may_list_unmatched(who, institution))
    return _page(request, "console_reconciliation.html", who, studies=reg.unmatched(institution))


@router.get(AREA + "/upgrades", response_class=HTMLResponse, name="console_upgrades")
def upgrades_page(request: Request, who: Who, db: Db, problem: str = "") -> Any:
    """Start an upgrade: a release, for chosen gateways, a group, or all of them."""
    gateways_seen = fleet_registry.list_gateways(db, who)
    groups = sorted({g.group for g in gateways_seen if g.group})
    return _page(
        request,
        "console_upgrades.html",
        who,
        422 if problem else 200,
        releases=upgrades.list_releases(db, who),
        gateways=gateways_seen,
        groups=groups,
        problem=problem,
    )


@router.post(AREA + "/upgrades", name="console_upgrade_start")
def upgrade_start(
    request: Request,
    who: Who,
    db: Db,
    release: Annotated[str, Form(max_length=64)],
    target: Annotated[str, Form(pattern=r"^(gateways|group|all)$")],
    gateway: Annotated[list[str] | None, Form(max_length=1000)] = None,
    group: Annotated[str, Form(max_length=64)] = "",
) -> Any:
    """Order the release; then watch it (the campaign's page)."""
    try:
        chosen = upgrades.Target(
            gateways=gateway if target == "gateways" else None,
            group=(group or None) if target == "group" else None,
            all=True if target == "all" else None,
        )
    except ValidationError as invalid:
        why = "; ".join(str(e["msg"]) for e in invalid.errors())
        return upgrades_page(request, who, db, problem=why)
    try:
        campaign = upgrades.start_upgrade(db, who, release, chosen)
    except (InvalidRecord, NotFound) as refused:  # no gateway matches; unknown release
        db.rollback()
        return upgrades_page(request, who, db, problem=str(refused))
    request.state.audit_resource = f"upgrade:{campaign}"
    return _back(f"{AREA}/upgrades/{campaign}")


@router.get(
    AREA + "/upgrades/{upgrade_id}", response_class=HTMLResponse, name="console_upgrade_watch"
)
def upgrade_watch(
    request: Request, upgrade_id: Annotated[int, Path(ge=1, le=2**63 - 1)], who: Who, db: Db
) -> Any:
    """A campaign's progress, per gateway; the page reloads itself until every gateway
    has finished (healthy, rolled back, refused or superseded)."""
    campaign = upgrades.upgrade_status(db, who, upgrade_id)
    finished = all(g.status in console_views.UPGRADE_DONE for g in campaign.gateways)
    return _page(request, "console_upgrade.html", who, campaign=campaign, finished=finished)
