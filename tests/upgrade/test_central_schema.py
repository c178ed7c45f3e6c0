"""Central's plugin tables from versioned migrations (#19, 4): the launcher migrates
orthanc_central once, before any central starts; two migrations at the same moment both
succeed with one result; a database the previous releases' plugins made is adopted as it
is; and a registry opened on tables that are not migrated refuses, saying what to run.

Against a stack's PostgreSQL alone; each case on a database of its own that the launcher
has not touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from imgcloud.central_schema import ADVISORY_LOCK, REVISION, VERSION_QUERY, VERSION_TABLE
from imgcloud.errors import PluginError
from imgcloud.instance_hashes import HashRegistry
from imgcloud.pushes import PushRegistry
from psycopg import sql

from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.services.postgres import CENTRAL_MIGRATIONS
from deploy.stack.settings import REPO_ROOT, StackSettings

from ..support.eventually import eventually

pytestmark = pytest.mark.integration

# What each central ran at every start before the migrations: bad4de4 (the 1.10.1 release
# tests/upgrade/test_upgrade_path.py upgrades from) had no unique index on open pushes;
# 1cfd9f5 added it after closing open duplicates.
HASHES_SCHEMA = """
CREATE TABLE IF NOT EXISTS imgcloud_instance_sha256 (
    orthanc_id  TEXT PRIMARY KEY,
    sha256      CHAR(64) NOT NULL,
    stored_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
PUSHES_SCHEMA_BAD4DE4 = """
CREATE TABLE IF NOT EXISTS imgcloud_pushes (
    push_id             UUID PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    from_institution    TEXT NOT NULL,
    to_institution      TEXT NOT NULL,
    deliver_to          TEXT,
    requested_by        TEXT,
    state               TEXT NOT NULL,
    detail              TEXT,
    instances           INTEGER,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at        TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS imgcloud_pushes_to_state ON imgcloud_pushes (to_institution, state);
"""
PUSHES_SCHEMA_1CFD9F5 = """
SELECT pg_advisory_xact_lock(7411);
CREATE TABLE IF NOT EXISTS imgcloud_pushes (
    push_id             UUID PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    from_institution    TEXT NOT NULL,
    to_institution      TEXT NOT NULL,
    deliver_to          TEXT,
    requested_by        TEXT,
    state               TEXT NOT NULL,
    detail              TEXT,
    instances           INTEGER,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at        TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS imgcloud_pushes_to_state ON imgcloud_pushes (to_institution, state);
UPDATE imgcloud_pushes p SET state = 'failed', updated_at = now(),
       detail = 'superseded by push ' || k.keeper || ' (one open push per study and receiver)'
FROM (SELECT push_id, first_value(push_id) OVER (
          PARTITION BY study_instance_uid, to_institution
          ORDER BY state = 'claimed' DESC, created_at, push_id) AS keeper
      FROM imgcloud_pushes WHERE state IN ('pending', 'claimed')) k
WHERE p.push_id = k.push_id AND k.push_id <> k.keeper;
CREATE UNIQUE INDEX IF NOT EXISTS imgcloud_pushes_one_open
    ON imgcloud_pushes (study_instance_uid, to_institution) WHERE state IN ('pending', 'claimed');
"""
TABLES = ("imgcloud_instance_sha256", "imgcloud_pushes", VERSION_TABLE)
ROLE = "orthanc_central"


@pytest.fixture(scope="module")
def ctx() -> Iterator[StackContext]:
    """A stack's PostgreSQL alone (the launcher's way: roles, databases, migration)."""
    state = Path(tempfile.mkdtemp(prefix="central-schema-", dir=REPO_ROOT / "var"))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    context = load_context(StackSettings.from_env(str(state)))
    try:
        start_service(context, "postgres")
        yield context
    finally:
        stop_service(context, "postgres")
        shutil.rmtree(state, ignore_errors=True)


def admin(ctx: StackContext, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports["postgres"],
        user="postgres",
        password=ctx.secrets["postgres_superuser"],
        dbname=dbname,
        connect_timeout=10,
        autocommit=True,
    )


def conninfo(ctx: StackContext, dbname: str) -> dict[str, Any]:
    """As central's Orthanc connects: its own role."""
    return {
        "host": "127.0.0.1",
        "port": ctx.ports["postgres"],
        "dbname": dbname,
        "user": ROLE,
        "password": ctx.secrets["db_central"],
        "connect_timeout": 10,
    }


@pytest.fixture
def fresh(ctx: StackContext) -> Iterator[str]:
    """An empty database owned by central's role, as the launcher makes orthanc_central."""
    name = f"central_{secrets.token_hex(4)}"
    with admin(ctx) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )
    yield name
    with admin(ctx) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def migration(ctx: StackContext, dbname: str) -> subprocess.Popen:
    """`alembic upgrade head` as a site runs it (docs/upgrade.md), in its own process."""
    url = (
        f"postgresql+psycopg://{ROLE}:{quote(ctx.secrets['db_central'], safe='')}"
        f"@127.0.0.1:{ctx.ports['postgres']}/{dbname}"
    )
    return subprocess.Popen(
        [
            str(REPO_ROOT / ".venv/bin/alembic"),
            *("-c", str(REPO_ROOT / CENTRAL_MIGRATIONS), "upgrade", "head"),
        ],
        cwd=REPO_ROOT,
        env=os.environ | {"IMGCLOUD_CENTRAL_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    return out


def facts(ctx: StackContext, dbname: str) -> dict[str, Any]:
    """Version rows, each table's owner, and the push indexes."""
    with admin(ctx, dbname) as conn:
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE tablename = ANY(%s)",
                (list(TABLES),),
            ).fetchall()
        )
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'imgcloud_pushes'"
            )
        }
        versions = []
        if VERSION_TABLE in owners:
            versions = [r[0] for r in conn.execute(VERSION_QUERY)]
    return {"owners": owners, "indexes": indexes, "versions": versions}


def waiting(conn: psycopg.Connection, dbname: str) -> int:
    """Sessions waiting for an advisory lock in database `dbname`."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = %s)",
        (dbname,),
    ).fetchone()
    return int(row[0]) if row else 0


def assert_at_head(ctx: StackContext, dbname: str) -> None:
    found = facts(ctx, dbname)
    assert found["versions"] == [REVISION]
    assert found["owners"] == dict.fromkeys(TABLES, ROLE)
    assert {"imgcloud_pushes_to_state", "imgcloud_pushes_one_open"} <= found["indexes"]


def test_the_launcher_migrated_orthanc_central_as_its_own_role(ctx: StackContext) -> None:
    assert_at_head(ctx, "orthanc_central")
    start_service(ctx, "postgres")  # a second start: nothing more to do, nothing fails
    assert_at_head(ctx, "orthanc_central")


def test_two_migrations_at_the_same_moment_both_succeed_with_one_result(
    ctx: StackContext, fresh: str
) -> None:
    with admin(ctx, fresh) as holder:
        # Hold the migrations' lock so both runs are surely inside their transaction and
        # waiting at once, then let them go together.
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
        runs = [migration(ctx, fresh), migration(ctx, fresh)]
        eventually(lambda: waiting(holder, fresh) == 2, what="both migrations waiting")
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK,))
    outputs = [finished(run) for run in runs]
    assert sum("Running upgrade  -> 0001" in out for out in outputs) == 1, outputs
    assert_at_head(ctx, fresh)


def test_a_database_the_previous_release_made_is_adopted_as_it_is(
    ctx: StackContext, fresh: str
) -> None:
    kept, closed = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(**conninfo(ctx, fresh), autocommit=True) as old:  # bad4de4's start
        old.execute(HASHES_SCHEMA)
        old.execute(PUSHES_SCHEMA_BAD4DE4)
        old.execute(
            "INSERT INTO imgcloud_instance_sha256 (orthanc_id, sha256) VALUES ('oid-1', %s)",
            ("a" * 64,),
        )
        for push_id, age in ((kept, "2 hours"), (closed, "1 hour")):  # two open: no index yet
            old.execute(
                """INSERT INTO imgcloud_pushes (push_id, study_instance_uid, from_institution,
                       to_institution, state, created_at)
                   VALUES (%s, '1.2.3', 'H0001', 'H0002', 'pending', now() - %s::interval)""",
                (push_id, age),
            )
    finished(migration(ctx, fresh))
    assert_at_head(ctx, fresh)
    hashes = HashRegistry(conninfo(ctx, fresh))
    pushes = PushRegistry(conninfo(ctx, fresh))
    try:
        assert hashes.lookup("oid-1") == "a" * 64
        stays, superseded = pushes.get(str(kept)), pushes.get(str(closed))
        assert stays is not None and stays["state"] == "pending"  # the oldest open one
        assert superseded is not None and superseded["state"] == "failed"
        assert str(kept) in superseded["detail"]
    finally:
        hashes.close()
        pushes.close()


def test_a_database_the_last_release_made_gains_only_its_version_row(
    ctx: StackContext, fresh: str
) -> None:
    with psycopg.connect(**conninfo(ctx, fresh), autocommit=True) as old:  # 1cfd9f5's start
        old.execute(HASHES_SCHEMA)
        old.execute(PUSHES_SCHEMA_1CFD9F5)
    before = facts(ctx, fresh)
    finished(migration(ctx, fresh))
    after = facts(ctx, fresh)
    assert before["versions"] == [] and after["versions"] == [REVISION]
    assert after["indexes"] == before["indexes"]
    assert_at_head(ctx, fresh)


def test_a_registry_on_tables_not_migrated_refuses_saying_what_to_run(
    ctx: StackContext, fresh: str
) -> None:
    for registry in (HashRegistry, PushRegistry):
        with pytest.raises(PluginError) as refused:
            registry(conninfo(ctx, fresh))
        message = str(refused.value)
        assert "central plugin tables are not migrated" in message
        assert f"needs revision {REVISION}" in message and "upgrade head" in message
        assert ctx.secrets["db_central"] not in message
    finished(migration(ctx, fresh))
    with admin(ctx, fresh) as conn:
        # as an older release's would be
        conn.execute("UPDATE imgcloud_central_version SET version_num = '0000'")
    with pytest.raises(PluginError, match=f"at revision 0000, this release needs {REVISION}"):
        HashRegistry(conninfo(ctx, fresh))
