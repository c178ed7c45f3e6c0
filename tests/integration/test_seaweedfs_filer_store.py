"""The SeaweedFS filer keeps its entries in PostgreSQL (postgres2), and a stack made before
that moves its leveldb2 entries there on its first start (seaweedfs_filer.py).

Each test starts a PostgreSQL and a SeaweedFS of its own, in a state directory of its own
on free ports (the stack's services themselves, no other part of the stack): run it under
the stack lock.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from deploy.stack.context import S3_BUCKET, StackContext
from deploy.stack.launcher import load_context
from deploy.stack.processes import stop
from deploy.stack.services.base import Service
from deploy.stack.services.postgres import Postgres
from deploy.stack.services.seaweedfs import SeaweedFS
from deploy.stack.services.seaweedfs_filer import LEVELDB2
from deploy.stack.settings import REPO_ROOT, StackSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx() -> Iterator[StackContext]:
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="test-weed-filer-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    context = load_context(StackSettings.from_env(str(state)))
    try:
        run(Postgres(context))
        yield context
    finally:
        for name, svc in (("seaweedfs", SeaweedFS(context)), ("postgres", Postgres(context))):
            stop(context.settings.run_dir, name, sig=svc.stop_signal, timeout_s=60)
        shutil.rmtree(state, ignore_errors=True)


def run(svc: Service) -> None:
    svc.prepare()
    svc.start()
    svc.wait_healthy(svc.ctx.settings.start_timeout_s)
    svc.after_healthy()


def halt(svc: Service) -> None:
    assert stop(svc.ctx.settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=60)


def put_objects(weed: SeaweedFS, count: int) -> dict[str, bytes]:
    client = weed._client()
    objects = {
        f"test/{i:03d}-{secrets.token_hex(4)}": secrets.token_bytes(3000) for i in range(count)
    }
    for key, body in objects.items():
        client.put_object(Bucket=S3_BUCKET, Key=key, Body=body)
    return objects


def read_back(weed: SeaweedFS, objects: dict[str, bytes]) -> None:
    client = weed._client()
    for key, body in objects.items():
        assert client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read() == body, key


def names_in_postgres(ctx: StackContext) -> set[str]:
    """Object names in the filer's PostgreSQL tables (postgres2 keeps a bucket's entries in
    a table named after the bucket)."""
    with psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports["postgres"],
        user="seaweedfs",
        password=ctx.secrets["db_seaweedfs"],
        dbname="seaweedfs",
        connect_timeout=3,
    ) as conn:
        query = sql.SQL("SELECT directory, name FROM {}").format(sql.Identifier(S3_BUCKET))
        rows = conn.execute(query).fetchall()
    return {f"{d.rstrip('/')}/{n}" for d, n in rows}


def keys_as_rows(objects: dict[str, bytes]) -> set[str]:
    # the bucket table holds paths below the bucket: "/test/000-ab12cd34"
    return {f"/{key}" for key in objects}


def test_the_filer_keeps_object_names_in_postgresql(ctx: StackContext) -> None:
    weed = SeaweedFS(ctx)
    run(weed)
    objects = put_objects(weed, 5)
    assert keys_as_rows(objects) <= names_in_postgres(ctx)
    assert not (weed.data_dir / "filerldb2").exists()
    halt(weed)
    weed = SeaweedFS(ctx)
    run(weed)
    read_back(weed, objects)


def test_a_stack_on_leveldb2_keeps_it_and_its_objects(ctx: StackContext) -> None:
    """A stack made before postgres2 keeps its leveldb2 store (the automatic move lost
    objects' names in the upgrade test, so none is attempted): every object reads back."""
    # The release before: no filer.toml, so SeaweedFS's default leveldb2 in data/filerldb2.
    old = SeaweedFS(ctx)
    old.filer_store = LEVELDB2
    old.prepare()
    (old.config_dir / "filer.toml").unlink()
    old.start()
    old.wait_healthy(ctx.settings.start_timeout_s)
    old.after_healthy()
    objects = put_objects(old, 40)
    legacy = old.data_dir / "filerldb2"
    assert legacy.is_dir()
    halt(old)

    weed = SeaweedFS(ctx)
    run(weed)
    assert legacy.is_dir()
    assert "[leveldb2]" in (weed.config_dir / "filer.toml").read_text()
    read_back(weed, objects)
