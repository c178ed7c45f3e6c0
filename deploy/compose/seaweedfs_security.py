"""security.toml and filer.toml for the compose deployment's SeaweedFS (docker-compose.yml
mounts the folder at /etc/seaweedfs): fresh JWT signing keys for the volume server and the
filer, and the filer's store, postgres2 on the compose PostgreSQL (role and database
"seaweedfs"; the password is not in the file: compose passes DB_SEAWEEDFS_PASSWORD to
SeaweedFS as WEED_POSTGRES2_PASSWORD).

    python -m deploy.compose.seaweedfs_security DIR

With the master's and filer's HTTP APIs off (`-disableHttp` in docker-compose.yml), the
S3 API is the only HTTP door. gRPC between SeaweedFS's own parts stays on the compose
network without TLS here: a site that shares that network with other containers adds
the [grpc] section with its own certificates (see deploy/stack/services/seaweedfs.py,
which the local stack runs with mutual TLS on every gRPC port).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

KEYS = ("weed_jwt_volume_write", "weed_jwt_volume_read", "weed_jwt_filer_write",
        "weed_jwt_filer_read")  # fmt: skip


def write(folder: Path) -> Path:
    """Write security.toml (fresh keys) and filer.toml into folder; security.toml's path."""
    from deploy.stack.services.seaweedfs import security_toml
    from deploy.stack.services.seaweedfs_filer import POSTGRES2, filer_toml

    text = security_toml({k: secrets.token_urlsafe(32) for k in KEYS})  # no gRPC TLS here
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(folder / "filer.toml", filer_toml(POSTGRES2, host="postgres", port=5432))
    return _write_private(folder / "security.toml", text)


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m deploy.compose.seaweedfs_security DIR")
    print(write(Path(sys.argv[1])))
