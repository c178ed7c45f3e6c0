"""The audit trail for auditors: query and export (JSON)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import text

from ...errors import Forbidden
from ...schemas import NO_NUL
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def audit_events(
    who: Caller,
    reg: Reg,
    request: Request,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    resource: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """Audit records, oldest first, as JSON (an export is the same call with a window)."""
    if not who.has("auditor"):
        raise Forbidden("the audit trail is for auditors")
    rows = reg.session.execute(
        text(
            "SELECT id, at, actor, username, roles, institution, action, resource, purpose, "
            "source, outcome, encode(hash, 'hex') AS hash FROM audit_events "
            "WHERE (CAST(:since AS timestamptz) IS NULL OR at >= :since) "
            "AND (CAST(:until AS timestamptz) IS NULL OR at < :until) "
            "AND (CAST(:actor AS text) IS NULL OR actor = :actor OR username = :actor) "
            "AND (CAST(:action AS text) IS NULL OR action = :action) "
            "AND (CAST(:resource AS text) IS NULL OR resource = :resource) "
            "ORDER BY id LIMIT :limit"
        ),
        {
            "since": since,
            "until": until,
            "actor": actor,
            "action": action,
            "resource": resource,
            "limit": limit,
        },
    )
    events: list[dict[str, Any]] = []
    for row in rows:
        item = dict(row._mapping)
        item["at"] = item["at"].isoformat()
        events.append(item)
    return Response(
        json.dumps({"events": events}, ensure_ascii=False), media_type="application/json"
    )
