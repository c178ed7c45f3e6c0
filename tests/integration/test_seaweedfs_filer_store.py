"""The SeaweedFS filer keeps its entries in PostgreSQL (postgres2), and a stack made before
that moves its leveldb2 entries there on its first start (seaweedfs_filer.py).

Each test starts a PostgreSQL and a SeaweedFS of its own, in a state directory of its own
on free ports (the stack's services themselves, no other part of the stack): run it under
the stack lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from deploy.stack.context import S3_BUCKET, StackContext
from deploy.stack.services.postgres import Postgres
from deploy.stack.services.seaweedfs import SeaweedFS
from deploy.stack.services.seaweedfs_filer import LEVELDB2

from ..support.scratch_stack import scratch_context, scratch_state, start, stop_service

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx() -> Iterator[StackContext]:
    with scratch_state("test-weed-filer-") as state:
        context = scratch_context(state)
        try:
            start(Postgres(context))
            yield context
        finally:
            stop_service(SeaweedFS(context))
            stop_service(Postgres(context))


def halt(svc: SeaweedFS) -> None:
    assert stop_service(svc)


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
    start(weed)
    objects = put_objects(weed, 5)
    assert keys_as_rows(objects) <= names_in_postgres(ctx)
    assert not (weed.data_dir / "filerldb2").exists()
    halt(weed)
    weed = SeaweedFS(ctx)
    start(weed)
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
    start(weed)
    assert legacy.is_dir()
    assert "[leveldb2]" in (weed.config_dir / "filer.toml").read_text()
    read_back(weed, objects)
