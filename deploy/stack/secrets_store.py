"""Per-stack generated secrets, kept in the state directory with mode 0600."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

SECRET_NAMES = (
    "postgres_superuser",
    "db_central",
    "db_indexer",
    "db_keycloak",
    "db_seaweedfs",  # the SeaweedFS filer's store (its entries: object names)
    "central_orthanc",
    "edge_a_orthanc",
    "edge_b_orthanc",
    "s3_access_key",
    "s3_secret_key",
    "keycloak_admin",
    "demo_radiologist_a",
    "demo_radiologist_b",
    "demo_admin",
    "demo_auditor",
    "demo_hospital_admin_a",
    "demo_clinician_b",
    "demo_regulator",
    "indexer_platform_key",
    "gateway_forward_secret",  # nginx -> indexer: its forwarded client address is believed
    "gateway_h0001",
    "gateway_h0002",
    # SeaweedFS's own JWT signing keys (security.toml): volume writes and reads, filer
    # writes and reads. Only the processes of `weed server` hold them.
    "weed_jwt_volume_write",
    "weed_jwt_volume_read",
    "weed_jwt_filer_write",
    "weed_jwt_filer_read",
)


def ensure_secrets(path: Path) -> dict[str, str]:
    """Load the stack's secrets, generating any that are missing."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name in SECRET_NAMES:
        if name not in known:
            # URL-safe and free of characters that need quoting in configs or DSNs.
            known[name] = (
                secrets.token_hex(16)
                if name != "s3_access_key"
                else ("AK" + secrets.token_hex(9).upper())
            )
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(known, indent=1))
    return known
