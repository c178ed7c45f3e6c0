"""Gateways' rules documents, authored at central: per gateway, or a template deep-merged
with each attached gateway's overrides.

Every document is validated with the edge's own schema (imgcloud.edge_rules.EdgeRules,
the module the edge validates its local PUT with) before anything is stored: an invalid
document never leaves central (422 naming each problem, nothing changes). Central sets
`version` itself: above its own last version for the gateway and above the version the
gateway last reported applying (edge versions only move forward; an edge given a local PUT
may be ahead of central). Every version is kept, with its author, time and source, and
what the edge reported about it (applied, or refused and why).

Edges fetch by long poll (`newer_rules`, async, no connection held while waiting: see
fleet_watch.py). Operator functions ask access.may_use_console first (fleet_registry);
templates are platform administrators' (they span institutions).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from imgcloud.edge_rules import EdgeRules
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import get_settings
from ..errors import Forbidden, IndexerError, NotFound
from ..models.fleet import FleetGateway, FleetRules, FleetTemplate
from ..security.auth import Principal
from . import access
from .fleet_registry import Edge, gateway_row, operator_scope
from .fleet_watch import announce

MAX_DOCUMENT_BYTES = 64 * 1024


class RulesInvalid(IndexerError):
    """The document breaks the edge's schema: `problems` names each (422)."""

    status = 422

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems))
        self.problems = problems


# --- pure logic ----------------------------------------------------------------------


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it: objects merge key by key (recursively), any
    other value (lists too) replaces the base's, and null removes the key (the edge's
    default then applies). Neither argument is changed."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def next_version(central_last: int | None, edge_applied: int | None) -> int:
    """The version of the next document: above central's last and the edge's in force."""
    return max(central_last or 0, edge_applied or 0) + 1


def problems_of(document: object, where: tuple[str, ...] = ("document",)) -> list[dict[str, Any]]:
    """What the edge's schema says is wrong with a document (empty: valid)."""
    if not isinstance(document, dict):
        return [{"loc": list(where), "msg": "must be a JSON object", "type": "type_error"}]
    if len(json.dumps(document)) > MAX_DOCUMENT_BYTES:
        return [
            {
                "loc": list(where),
                "msg": f"longer than {MAX_DOCUMENT_BYTES} bytes",
                "type": "value_error",
            }
        ]
    try:
        EdgeRules.model_validate(document)
    except ValidationError as exc:
        return [
            {"loc": [*where, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
    return []


def versioned(document: dict[str, Any], version: int) -> dict[str, Any]:
    return {**document, "version": version}


# --- storing -------------------------------------------------------------------------


def _issue(
    session: Session, row: FleetGateway, document: dict[str, Any], author: str, source: str
) -> int:
    """Store the next version of a gateway's document (validated by the caller)."""
    last = session.scalar(
        select(func.max(FleetRules.version)).where(FleetRules.gateway_id == row.gateway_id)
    )
    version = next_version(last, row.rules_applied)
    session.add(
        FleetRules(
            gateway_id=row.gateway_id,
            version=version,
            document=versioned(document, version),
            author=author,
            source=source,
        )
    )
    row.rules_latest = version
    announce(session, row.gateway_id)
    return version


def put_rules(session: Session, who: Principal, gateway_id: str, document: object) -> int:
    """A gateway's own document (it leaves any template): the new version, or
    RulesInvalid and nothing stored."""
    row = gateway_row(session, who, gateway_id, lock=True)
    found = problems_of(versioned(document, 1) if isinstance(document, dict) else document)
    if found:
        raise RulesInvalid(found)
    assert isinstance(document, dict)
    row.template, row.overrides = None, None
    version = _issue(session, row, document, who.username, "direct")
    session.commit()
    return version


def put_template(session: Session, who: Principal, name: str, document: object) -> dict[str, int]:
    """Create or replace a template (platform admins): a new version for every gateway
    attached to it, or RulesInvalid (naming the gateway of each problem) and nothing
    changes. Returns the new version per gateway."""
    if not access.unconfined(operator_scope(who)):
        raise Forbidden("templates are edited by platform administrators")
    found = problems_of(versioned(document, 1) if isinstance(document, dict) else document)
    if found:
        raise RulesInvalid(found)
    assert isinstance(document, dict)
    template = session.get(FleetTemplate, name, with_for_update=True)
    attached = session.scalars(
        select(FleetGateway)
        .where(FleetGateway.template == name)
        .order_by(FleetGateway.gateway_id)
        .with_for_update()
    ).all()
    effective = {row.gateway_id: deep_merge(document, row.overrides or {}) for row in attached}
    found = [
        p
        for gid, doc in effective.items()
        for p in problems_of(versioned(doc, 1), ("gateways", gid))
    ]
    if found:
        raise RulesInvalid(found)
    if template is None:
        session.add(FleetTemplate(name=name, document=document, updated_by=who.username))
    else:
        template.document, template.updated_by = document, who.username
        template.updated_at = dt.datetime.now(dt.UTC)
    session.flush()
    versions = {
        row.gateway_id: _issue(
            session, row, effective[row.gateway_id], who.username, f"template:{name}"
        )
        for row in attached
    }
    session.commit()
    return versions


def set_template(
    session: Session, who: Principal, gateway_id: str, name: str | None, overrides: dict[str, Any]
) -> int | None:
    """Attach a gateway to a template with its overrides: the new effective version (or
    RulesInvalid, nothing changes). None detaches it: its document in force stays, and
    the answer is its latest version."""
    row = gateway_row(session, who, gateway_id, lock=True)
    if name is None:
        row.template, row.overrides = None, None
        session.commit()
        return row.rules_latest
    template = session.get(FleetTemplate, name)
    if template is None:
        raise NotFound("no such template")
    effective = deep_merge(template.document, overrides)
    found = problems_of(versioned(effective, 1))
    if found:
        raise RulesInvalid(found)
    row.template, row.overrides = name, overrides
    version = _issue(session, row, effective, who.username, f"template:{name}")
    session.commit()
    return version


class RulesVersionOut(BaseModel):
    version: int
    author: str
    created_at: dt.datetime
    source: str
    document: dict[str, Any]
    reported: str | None
    reported_reason: str | None
    reported_at: dt.datetime | None


def rules_history(
    session: Session, who: Principal, gateway_id: str, limit: int = 100
) -> list[RulesVersionOut]:
    """A gateway's versions, newest first (who wrote each, when, what the edge said)."""
    gateway_row(session, who, gateway_id)
    rows = session.scalars(
        select(FleetRules)
        .where(FleetRules.gateway_id == gateway_id)
        .order_by(FleetRules.version.desc())
        .limit(limit)
    )
    return [RulesVersionOut.model_validate(row, from_attributes=True) for row in rows]


def rules_version(
    session: Session, who: Principal, gateway_id: str, version: int
) -> RulesVersionOut:
    """One version (the console diffs a draft against the one in force)."""
    gateway_row(session, who, gateway_id)
    row = session.scalars(
        select(FleetRules).where(FleetRules.gateway_id == gateway_id, FleetRules.version == version)
    ).first()
    if row is None:
        raise NotFound("no such rules version")
    return RulesVersionOut.model_validate(row, from_attributes=True)


# --- the edge ------------------------------------------------------------------------

NEWER_SQL = """
WITH registered AS (
    INSERT INTO fleet_gateways (gateway_id, institution, interval_s)
    VALUES (%(gateway_id)s, %(institution)s, %(interval_s)s)
    ON CONFLICT (gateway_id) DO NOTHING
)
SELECT version, document FROM fleet_rules
WHERE gateway_id = %(gateway_id)s AND version > %(have)s
ORDER BY version DESC LIMIT 1
"""


async def newer_rules(
    pool: AsyncConnectionPool, edge: Edge, have: int
) -> tuple[int, dict[str, Any]] | None:
    """The newest version above `have`, or None (registers the gateway on first call)."""
    params = {
        "gateway_id": edge.gateway_id,
        "institution": edge.institution,
        "interval_s": get_settings().fleet_heartbeat_interval_s,
        "have": have,
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(NEWER_SQL, params)
        row = await cur.fetchone()
    return (int(row[0]), dict(row[1])) if row else None


def report(session: Session, edge: Edge, version: int, status: str, reason: str | None) -> None:
    """The edge applied (or refused, and why) a version central issued it."""
    row = session.get(FleetGateway, edge.gateway_id, with_for_update=True)
    rules = session.scalars(
        select(FleetRules).where(
            FleetRules.gateway_id == edge.gateway_id, FleetRules.version == version
        )
    ).first()
    if row is None or rules is None:
        raise NotFound("central issued no such version to this gateway")
    rules.reported, rules.reported_reason = status, reason
    rules.reported_at = dt.datetime.now(dt.UTC)
    if status == "applied":
        row.rules_applied = max(row.rules_applied or 0, version)
        if (row.rules_refused or 0) <= version:
            row.rules_refused, row.rules_refused_reason = None, None
    else:
        row.rules_refused, row.rules_refused_reason = version, reason
    session.commit()
