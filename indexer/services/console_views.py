"""What the operator console's pages show (#15), made from the fleet services' answers.

Nothing here reads the database or decides who may see what: the fleet services
(services/fleet_registry.py, fleet_rules.py, fleet_stale.py, fleet_upgrades.py) load
what the operator may see (their scope is services/access.py's `may_use_console`), and
every change the console makes is theirs too, so the console cannot drift from the API.
This module only shapes their answers for a page: a gateway's heartbeat fields, the
failing deliveries, a rules document's diff against the version in force.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from .fleet_registry import GatewayOut

# statuses an upgrade target no longer moves from (the watch page stops refreshing)
UPGRADE_DONE = frozenset({"healthy", "rolled_back", "refused", "superseded"})


@dataclass(frozen=True)
class GatewayRow:
    """One gateway as the console lists it: the registry's view and its latest heartbeat
    (a heartbeat's fields are the edge's: read defensively, never trusted to be there)."""

    gateway: GatewayOut
    queue_depth: int | None = None
    oldest_undelivered_age_s: float | None = None
    failing_deliveries: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    last_delivery_at: str | None = None

    @property
    def status(self) -> str:
        """ "stale", "waiting" (registered, no heartbeat yet) or "online"."""
        if self.gateway.stale:
            return "stale"
        return "online" if self.gateway.last_heartbeat_at is not None else "waiting"


def row(gateway: GatewayOut) -> GatewayRow:
    beat: dict[str, Any] = gateway.heartbeat or {}
    reasons = beat.get("failure_reasons")
    last = beat.get("last_delivery_at")
    return GatewayRow(
        gateway=gateway,
        queue_depth=_int(beat.get("queue_depth")),
        oldest_undelivered_age_s=_float(beat.get("oldest_undelivered_age_s")),
        failing_deliveries=_int(beat.get("failing_deliveries")) or 0,
        failure_reasons=(
            {str(k): _int(v) or 0 for k, v in reasons.items()} if isinstance(reasons, dict) else {}
        ),
        last_delivery_at=str(last) if last is not None else None,
    )


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def failing(rows: list[GatewayRow]) -> list[GatewayRow]:
    """Gateways reporting failing deliveries, the most failures first."""
    return sorted(
        (r for r in rows if r.failing_deliveries > 0),
        key=lambda r: (-r.failing_deliveries, r.gateway.gateway_id),
    )


def age(moment: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, for a table cell ("42 s", "3 min", "2 h"; "—" for never)."""
    if moment is None:
        return "—"
    seconds = max(0.0, ((now or dt.datetime.now(dt.UTC)) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


# --- rules documents -----------------------------------------------------------------------


def pretty(document: dict[str, Any]) -> str:
    """A document as the console shows and diffs it: sorted keys, two-space indent."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False)


def without_version(document: dict[str, Any]) -> dict[str, Any]:
    """Central sets "version" itself on every push: it is not the operator's to edit."""
    return {k: v for k, v in document.items() if k != "version"}


def parse_draft(text: str) -> tuple[dict[str, Any] | None, str]:
    """An operator's draft: (document, "") or (None, why it is not a JSON object). The
    schema's own check is fleet_rules'; this only reads the text."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if not isinstance(document, dict):
        return None, "the document must be a JSON object"
    return without_version(document), ""


def rules_diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[tuple[str, str]]:
    """A unified diff of two documents (pretty-printed, sorted keys, "version" left out),
    as (kind, line) with kind "add", "del", "hunk" or "same"; empty when they agree."""
    old = pretty(without_version(before or {})).splitlines()
    new = pretty(without_version(after)).splitlines()
    out: list[tuple[str, str]] = []
    for line in difflib.unified_diff(old, new, "in force", "proposed", lineterm="", n=3):
        if line.startswith(("---", "+++")):
            continue
        out.append(({"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same"), line))
    return out
