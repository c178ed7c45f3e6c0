"""The SeaweedFS filer's store: where it keeps its entries (every object's name and chunks).

SeaweedFS's default, leveldb2, writes entries without sync: after a power loss the needle
data (fsynced by the bucket's `fs.configure -fsync` rule) can be on disk while the name
that finds it is gone. The stack's filer keeps its entries in the stack's PostgreSQL
instead (SeaweedFS's `postgres2` store, database and role "seaweedfs"), where a commit
is fsynced before the filer answers.

A stack made before this keeps its entries in data/filerldb2. Its first `up` after the
upgrade moves them: SeaweedFS is started on the old store, `fs.meta.save` writes every
entry to a file, SeaweedFS is started again on postgres2, `fs.meta.load` reads the file
back, and the counts printed by both must agree; only then is data/filerldb2 renamed to
data/filerldb2.moved-to-postgres2 (kept, not deleted). A failure at any step stops `up`
with the old store untouched, so the next `up` tries again.
"""

from __future__ import annotations

import re
from pathlib import Path

POSTGRES2 = "postgres2"
LEVELDB2 = "leveldb2"
DATABASE = "seaweedfs"  # database and role (deploy/stack/services/postgres.py)
LEGACY_DIR = "filerldb2"  # SeaweedFS's default leveldb2 folder under `weed server -dir`
MOVED_SUFFIX = ".moved-to-postgres2"
META_FILE = "filer-entries.meta"

_TOTAL = re.compile(r"total (\d+) directories, (\d+) files")


def filer_toml(
    store: str,
    *,
    password: str = "",
    host: str = "127.0.0.1",
    port: int = 5432,
    leveldb_dir: str = "",
) -> str:
    """filer.toml choosing the filer's store: postgres2 on the stack's PostgreSQL (role and
    database "seaweedfs"), or leveldb2 in `leveldb_dir` (old stacks, benchmarks). Without
    a password the file names none: SeaweedFS then takes WEED_POSTGRES2_PASSWORD from its
    environment (compose)."""
    if store == LEVELDB2:
        return f'[leveldb2]\nenabled = true\ndir = "{leveldb_dir}"\n'
    if store != POSTGRES2:
        raise ValueError(f"unknown filer store {store!r}")
    lines = [
        "[postgres2]",
        "enabled = true",
        f'hostname = "{host}"',
        f"port = {port}",
        f'username = "{DATABASE}"',
        f'database = "{DATABASE}"',
        'schema = ""',
        # as every other client of the cluster: loopback (native), the compose network
        'sslmode = "disable"',
        "connection_max_idle = 10",
        "connection_max_open = 20",
        "connection_max_lifetime_seconds = 300",
        "enableUpsert = true",
    ]
    if password:
        lines.append(f'password = "{password}"')
    return "\n".join(lines) + "\n"


def legacy_store(data_dir: Path) -> Path | None:
    """The leveldb2 folder of a stack made before the postgres2 store, if not moved yet."""
    path = data_dir / LEGACY_DIR
    return path if path.is_dir() else None


def totals(shell_output: str) -> tuple[int, int] | None:
    """(directories, files) from fs.meta.save's or fs.meta.load's closing line."""
    found = _TOTAL.findall(shell_output)
    if not found:
        return None
    dirs, files = found[-1]
    return int(dirs), int(files)
