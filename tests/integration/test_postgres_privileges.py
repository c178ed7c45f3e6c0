"""Each component's database is open to its own role only: no component's role can log
in to another's database, on the native stack's PostgreSQL (provisioned as `up` does it,
including a stack an earlier release provisioned) and with the compose init scripts
(deploy/compose/postgres-init*.sh, run here by psql 15 as the postgres image runs them).

The first two tests each start a PostgreSQL of their own (the stack's service, no other
part of the stack) in a state directory of their own on free ports; the last checks the
whole stack, running. Run it under the stack lock.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
import yaml
from psycopg import sql

from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context
from deploy.stack.services.postgres import DATABASES, PG_BIN, Postgres
from deploy.stack.settings import REPO_ROOT, StackSettings

from ..support.scratch_stack import scratch_context, scratch_state, start, stop_service

pytestmark = pytest.mark.integration

COMPOSE_INIT = ("postgres-init.sh", "postgres-init-seaweedfs.sh")
# the password variables docker-compose.yml gives the postgres service, per database
COMPOSE_PASSWORDS = {
    "orthanc_central": "DB_CENTRAL_PASSWORD",
    "indexer": "DB_INDEXER_PASSWORD",
    "keycloak": "DB_KEYCLOAK_PASSWORD",
    "seaweedfs": "DB_SEAWEEDFS_PASSWORD",
}


@pytest.fixture
def pg() -> Iterator[Postgres]:
    """A running PostgreSQL of the stack's kind, not provisioned yet."""
    with scratch_state("test-pg-privileges-") as state:
        svc = Postgres(scratch_context(state))
        try:
            start(svc, then_provision=False)
            yield svc
        finally:
            stop_service(svc)


def connect_as(ctx: StackContext, role: str, password: str, database: str) -> str:
    """'ok' if `role` logs in to `database` (and may make a temporary table there), else
    PostgreSQL's reason."""
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=ctx.ports["postgres"],
            user=role,
            password=password,
            dbname=database,
            connect_timeout=5,
            autocommit=True,
        ) as conn:
            conn.execute("CREATE TEMPORARY TABLE probe (x int)")
    except psycopg.OperationalError as exc:
        return str(exc)
    return "ok"


def assert_each_role_reaches_only_its_own_database(
    ctx: StackContext, passwords: dict[str, str]
) -> None:
    """`passwords`: database -> the password of the role owning it."""
    for database, (owner, _secret) in DATABASES.items():
        for other_db, (role, _other_secret) in DATABASES.items():
            found = connect_as(ctx, role, passwords[other_db], database)
            if role == owner:
                assert found == "ok", (role, database, found)
            else:
                assert f'permission denied for database "{database}"' in found, (role, database)


def public_grants(pg: Postgres) -> dict[str, list[str]]:
    """database -> what PUBLIC may do there (PostgreSQL's defaults where no grant was made:
    CONNECT and TEMPORARY)."""
    with pg._connect() as conn:
        rows = conn.execute(
            "SELECT d.datname, a.privilege_type FROM pg_database AS d "
            "LEFT JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a "
            "ON a.grantee = 0 WHERE d.datname = ANY(%s)",
            (list(DATABASES),),
        ).fetchall()
    found: dict[str, list[str]] = {}
    for name, privilege in rows:
        found.setdefault(name, [])
        if privilege is not None:
            found[name].append(privilege)
    assert sorted(found) == sorted(DATABASES)
    return {name: sorted(privileges) for name, privileges in found.items()}


def grant_to_public(pg: Postgres) -> None:
    """What a stack or volume provisioned by an earlier release has: PostgreSQL's default
    grants to PUBLIC on every database."""
    with pg._connect() as conn:
        for database in DATABASES:
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC").format(
                    sql.Identifier(database)
                )
            )
    assert public_grants(pg) == {db: ["CONNECT", "TEMPORARY"] for db in DATABASES}


def test_the_stacks_provisioning_leaves_each_database_to_its_role(pg: Postgres) -> None:
    ctx = pg.ctx
    passwords = {db: ctx.secrets[secret] for db, (_role, secret) in DATABASES.items()}
    pg.after_healthy()  # as `up` does: roles, databases, grants, central's migrations
    assert public_grants(pg) == {db: [] for db in DATABASES}
    assert_each_role_reaches_only_its_own_database(ctx, passwords)

    grant_to_public(pg)  # a stack an earlier release provisioned
    assert connect_as(ctx, "indexer", passwords["indexer"], "keycloak") == "ok"
    pg.provision()  # the next `up`
    assert public_grants(pg) == {db: [] for db in DATABASES}
    assert_each_role_reaches_only_its_own_database(ctx, passwords)


def run_compose_init(pg: Postgres, passwords: dict[str, str]) -> None:
    """Both init scripts, as the postgres image's entry point runs them: sh, as the
    postgres user over the local socket, the passwords in the environment."""
    env = {
        "PATH": f"{PG_BIN}:/usr/bin:/bin",
        "PGHOST": str(pg.socket_dir),
        "PGPORT": str(pg.ctx.ports["postgres"]),
        **{COMPOSE_PASSWORDS[db]: pw for db, pw in passwords.items()},
        # the exporter's role (pg_monitor only), with a password SQL pasting would break
        "DB_MONITORING_PASSWORD": secrets.token_urlsafe(12) + "'; -- \\ :'x'",
    }
    for name in COMPOSE_INIT:
        with open(REPO_ROOT / "deploy" / "compose" / name, "rb") as script:
            done = subprocess.run(
                ["/bin/sh", "-s"],
                stdin=script,
                env=env,
                user="postgres",
                group="postgres",
                capture_output=True,
                timeout=60,
                check=False,
                cwd="/",
            )
        assert done.returncode == 0, (name, done.stderr.decode(errors="replace"))


def test_the_compose_init_scripts_leave_each_database_to_its_role(pg: Postgres) -> None:
    """A first start, then a run by hand on that volume as an earlier release left it
    (PUBLIC's grants back), with passwords that SQL pasting would break; the second run's
    passwords are the ones that count."""
    assert set(COMPOSE_PASSWORDS) == set(DATABASES)
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert set(COMPOSE_PASSWORDS.values()) <= set(compose["services"]["postgres"]["environment"])
    for run in range(2):
        if run:
            grant_to_public(pg)
        passwords = {
            db: f"{secrets.token_urlsafe(12)}'; DROP ROLE postgres; -- \\ :'x' \"q\""
            for db in DATABASES
        }
        run_compose_init(pg, passwords)
    with pg._connect() as conn:
        owners: dict[str, str] = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
                (list(DATABASES),),
            ).fetchall()
        )
    assert owners == {db: role for db, (role, _secret) in DATABASES.items()}
    assert public_grants(pg) == {db: [] for db in DATABASES}
    assert_each_role_reaches_only_its_own_database(pg.ctx, passwords)


def test_on_the_running_stack_each_database_is_its_roles_alone(
    stack_settings: StackSettings,
) -> None:
    """The whole stack up (its services connected under these grants): every session in a
    component's database is its owner's (or the superuser's), and no other role gets in."""
    ctx = load_context(stack_settings)
    pg = Postgres(ctx)
    assert public_grants(pg) == {db: [] for db in DATABASES}
    with pg._connect() as conn:
        sessions = conn.execute(
            "SELECT datname, usename FROM pg_stat_activity WHERE datname = ANY(%s)",
            (list(DATABASES),),
        ).fetchall()
    for database, user in sessions:
        assert user in (DATABASES[database][0], "postgres"), (database, user)
    assert ("orthanc_central", "orthanc_central") in sessions  # central's index, connected
    passwords = {db: ctx.secrets[secret] for db, (_role, secret) in DATABASES.items()}
    assert_each_role_reaches_only_its_own_database(ctx, passwords)
