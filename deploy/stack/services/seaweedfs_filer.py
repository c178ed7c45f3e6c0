"""The SeaweedFS filer's store: where it keeps its entries (every object's name and chunks).

SeaweedFS's default, leveldb2, writes entries without sync: after a power loss the needle
data (fsynced by the bucket's `fs.configure -fsync` rule) can be on disk while the name
that finds it is gone. The stack's filer keeps its entries in the stack's PostgreSQL
instead (SeaweedFS's `postgres2` store, database and role "seaweedfs"), where a commit
is fsynced before the filer answers.

A stack made before this keeps its entries in data/filerldb2, and keeps using leveldb2:
an automatic move (fs.meta.save on leveldb2, a restart on postgres2, fs.meta.load, counts
compared) lost some objects' names in the upgrade test although the counts agreed, so it
is not done. Moving an existing store is open.
"""

from __future__ import annotations

from pathlib import Path

POSTGRES2 = "postgres2"
LEVELDB2 = "leveldb2"
DATABASE = "seaweedfs"  # database and role (deploy/stack/services/postgres.py)
LEGACY_DIR = "filerldb2"  # SeaweedFS's default leveldb2 folder under `weed server -dir`


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
