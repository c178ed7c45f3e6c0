"""Two of everything: pushes (#19, 4). Two push registries (two central nodes) on their own
connections, 50 creators of the same push at the same moment: one open push, and every
creator is answered with it; the grant they each record is one grant too."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from imgcloud.pushes import PushRegistry, PushRejected
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings
from indexer.models import Grant
from indexer.models import grant as grant_model

CREATORS = 50


def central_conninfo(stack_settings: StackSettings) -> dict[str, Any]:
    ctx = load_context(stack_settings)
    return {
        "host": "127.0.0.1",
        "port": ctx.ports["postgres"],
        "dbname": "orthanc_central",
        "user": "orthanc_central",
        "password": ctx.secrets["db_central"],
        "connect_timeout": 10,
    }


def indexer_url(stack_settings: StackSettings) -> str:
    dsn = load_context(stack_settings).pg_dsn("indexer", "indexer", "db_indexer")
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def test_fifty_creators_on_two_registries_make_one_push_and_one_grant(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    conninfo = central_conninfo(stack_settings)
    registries = [PushRegistry(conninfo), PushRegistry(conninfo)]  # two nodes' worth
    engines = [create_engine(indexer_url(stack_settings), pool_size=30) for _ in range(2)]
    uid = f"2.25.{secrets.randbits(96)}"
    request = {
        "study_instance_uid": uid,
        "from_institution": "H0001",
        "to_institution": "H0002",
        "deliver_to": None,
        "requested_by": "test",
    }
    start = threading.Barrier(CREATORS)

    def create(n: int) -> tuple[str, bool]:
        registry, engine = registries[n % 2], engines[n % 2]
        start.wait(timeout=60)
        push, created = registry.create(request)
        with Session(engine) as session, session.begin():  # what the edge records with it
            session.execute(
                grant_model.upsert(
                    study_instance_uid=uid,
                    owner_institution="H0001",
                    institution_code="H0002",
                    grantee_subject=None,
                    kind="push",
                    purpose=f"push {push['push_id']}",
                    granted_by="test",
                    expires_at=None,
                )
            )
        return push["push_id"], created

    try:
        with ThreadPoolExecutor(CREATORS) as pool:
            answers = list(pool.map(create, range(CREATORS)))
    finally:
        for engine in engines:
            engine.dispose()
    with psycopg.connect(**conninfo) as db:
        pushes = db.execute(
            "SELECT push_id, state FROM imgcloud_pushes WHERE study_instance_uid = %s", (uid,)
        ).fetchall()
    assert len(pushes) == 1, f"{len(pushes)} pushes of one study to one hospital"
    assert {push_id for push_id, _ in answers} == {str(pushes[0][0])}
    assert sum(created for _, created in answers) == 1  # one creator made it, all got it
    with Session(create_engine(indexer_url(stack_settings))) as session:
        grants = session.scalars(
            select(Grant).where(Grant.study_instance_uid == uid, Grant.revoked_at.is_(None))
        ).all()
    assert len(grants) == 1 and grants[0].kind == "push"


def test_a_failed_push_reopened_beside_a_new_one_is_refused_not_an_error(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    """Failed pushes may be claimed again: while another push of the same study to the same
    hospital is open, that answers 409 (the index allows one open push), not a 500."""
    registry = PushRegistry(central_conninfo(stack_settings))
    request = {
        "study_instance_uid": f"2.25.{secrets.randbits(96)}",
        "from_institution": "H0001",
        "to_institution": "H0002",
        "deliver_to": None,
        "requested_by": "test",
    }
    first, _ = registry.create(request)
    report = {"institution": "H0002", "state": "claimed"}
    registry.change(first["push_id"], report)
    registry.change(first["push_id"], report | {"state": "failed", "detail": "test"})
    second, created = registry.create(request)
    assert created and second["push_id"] != first["push_id"]
    with pytest.raises(PushRejected) as refused:
        registry.change(first["push_id"], report)
    assert refused.value.status == 409
    assert "open" in str(refused.value)
