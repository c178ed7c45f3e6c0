"""Secrets only the redundant topology uses, generated as deploy.stack.secrets_store does
(hex, in the state directory, mode 0600) but kept in a file of their own, so the small
stack's secrets.json is unchanged."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from .context import StackContext

HA_SECRET_NAMES = (
    "pg_replication",  # the PostgreSQL standby's streaming-replication role
    "patroni_api",  # Patroni's REST API, for its unsafe calls (switchover, restart)
)
HA_SECRETS_FILE = "secrets-ha.json"


def ensure_ha_secrets(path: Path) -> dict[str, str]:
    """Load the HA secrets at `path`, generating any that are missing."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in HA_SECRET_NAMES if name not in known]
    if missing:
        known |= {name: secrets.token_hex(16) for name in missing}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(known, indent=1))
    return known


def ha_secrets(ctx: StackContext) -> dict[str, str]:
    """The stack's secrets and the HA topology's own (generated on first use)."""
    return ctx.secrets | ensure_ha_secrets(ctx.state / HA_SECRETS_FILE)
