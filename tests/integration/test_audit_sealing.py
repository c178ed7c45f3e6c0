"""The audit chain leaves no committed row unsealed (#18, 10): a row whose transaction
commits after higher ids were sealed is sealed too; verify names a row left unsealed; the
deployment has one working sealer (a PostgreSQL lease), a second one waits, and a SIGTERM
stops a sealer cleanly."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service
from deploy.stack.settings import REPO_ROOT, StackSettings
from indexer.services.audit import event
from indexer.services.audit_writer import AuditWriter

from ..support.eventually import eventually
from .test_audit import indexer_cli

LEASE = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7401 AND granted"
SEALERS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'imgcloud-audit-sealer'"
INSERT = (
    "INSERT INTO audit_events (actor, username, roles, action, resource, outcome) "
    "VALUES ('test', 'test', '', %s, 'test:row', 200) RETURNING id"
)


def dsn(stack_settings: StackSettings) -> str:
    return load_context(stack_settings).pg_dsn("indexer", "indexer", "db_indexer")


def sealed(db: psycopg.Connection, ids: list[int]) -> bool:
    rows = db.execute("SELECT hash IS NOT NULL FROM audit_events WHERE id = ANY(%s)", (ids,))
    return all(r[0] for r in rows.fetchall()) and rows.rowcount == len(ids)


def test_a_row_committed_late_is_sealed_and_verify_passes(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    tag = secrets.token_hex(4)
    with psycopg.connect(dsn(stack_settings), autocommit=True) as db:
        late = psycopg.connect(dsn(stack_settings))  # writer 1: a transaction left open
        try:
            (late_id,) = late.execute(INSERT, (f"test.late.{tag}",)).fetchone()  # type: ignore[misc]
            began = time.monotonic()

            async def second_writer() -> None:
                async with AsyncConnectionPool(dsn(stack_settings), min_size=1) as pool:
                    writer = AuditWriter(pool)
                    for n in range(3):
                        await writer.record(event(None, f"test.early.{tag}", f"r:{n}", None, 200))
                    await writer.flush()

            asyncio.run(second_writer())
            early = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM audit_events WHERE action = %s", (f"test.early.{tag}",)
                ).fetchall()
            ]
            assert len(early) == 3 and min(early) > late_id
            # the sealer passes over the open transaction's row, past the old 2 s delay
            eventually(
                lambda: sealed(db, early) and time.monotonic() - began > 3,
                what="the second writer's rows sealed",
                timeout=20,
            )
            late.commit()
        finally:
            late.close()
        eventually(
            lambda: sealed(db, [late_id]), what=f"row {late_id}, committed late, sealed", timeout=20
        )
    checked = indexer_cli(stack_settings, "audit", "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_verify_names_a_row_left_unsealed(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    with psycopg.connect(dsn(stack_settings), autocommit=True) as db:
        stalled = psycopg.connect(dsn(stack_settings))  # holds sealing back, as a stuck
        try:  # sealer would: the row stays unsealed
            assert stalled.execute("SELECT pg_try_advisory_xact_lock(7402)").fetchone() == (True,)
            (old_id,) = db.execute(
                "INSERT INTO audit_events (at, actor, username, roles, action, outcome) "
                "VALUES (now() - interval '1 hour', 'test', 'test', '', 'test.old', 200) "
                "RETURNING id"
            ).fetchone()  # type: ignore[misc]
            caught = indexer_cli(stack_settings, "audit", "verify")
        finally:
            stalled.rollback()
            stalled.close()
        assert caught.returncode == 1, caught.stdout + caught.stderr
        assert f"audit record {old_id}: not sealed" in caught.stdout
        eventually(
            lambda: sealed(db, [old_id]), what="the sealer takes the row up again", timeout=20
        )
    assert indexer_cli(stack_settings, "audit", "verify").returncode == 0


def test_one_sealer_works_a_second_waits_and_sigterm_stops_it(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    env = service(load_context(stack_settings), "indexer").env()
    with psycopg.connect(dsn(stack_settings), autocommit=True) as db:
        eventually(
            lambda: db.execute(LEASE).fetchone() == (1,),
            what="a sealer holds the lease",
            timeout=20,
        )
        before = db.execute(SEALERS).fetchone()[0]  # type: ignore[index]
        assert before == 1  # one per deployment, not one per uvicorn worker
        second = subprocess.Popen(
            [sys.executable, "-m", "indexer", "audit", "seal", "--every", "0.2"],
            env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            eventually(
                lambda: db.execute(SEALERS).fetchone() == (2,),
                what="the second sealer connected",
                timeout=20,
            )
            assert db.execute(LEASE).fetchone() == (1,)  # it waits for the lease
            # the working sealer's connection dies: exactly one takes the lease again
            db.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = "
                "'advisory' AND l.objid = 7401 AND l.granted"
            )
            eventually(
                lambda: db.execute(LEASE).fetchone() == (1,),
                what="a sealer took the lease over",
                timeout=20,
            )
            (row_id,) = db.execute(INSERT, ("test.after-takeover",)).fetchone()  # type: ignore[misc]
            eventually(
                lambda: sealed(db, [row_id]), what="a row sealed after the takeover", timeout=20
            )
        finally:
            second.send_signal(signal.SIGTERM)
            out, _ = second.communicate(timeout=15)
        assert second.returncode == 0, out
        assert "audit sealer stopped" in out
        eventually(
            lambda: db.execute(LEASE).fetchone() == (1,),
            what="the deployment's sealer holds the lease again",
            timeout=20,
        )
    assert indexer_cli(stack_settings, "audit", "verify").returncode == 0
