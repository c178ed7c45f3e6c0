"""`up` on a stack whose PostgreSQL was left running still provisions it (#19, 4): roles,
databases and central's plugin migrations are idempotent, and an upgrade without
`make down` would otherwise leave the centrals refusing unmigrated tables."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from deploy.stack import launcher
from deploy.stack.services.base import Service
from deploy.stack.services.postgres import DATABASES, Postgres, private_database


class RunningService:
    """A service that is running and healthy; records its provisioning calls."""

    def __init__(self, name: str, provision_when_running: bool) -> None:
        self.name = name
        self.ports = ()
        self.provision_when_running = provision_when_running
        self.provisioned = 0

    def pid(self) -> int:
        return 4242

    def health(self) -> None:
        return None

    def after_healthy(self) -> None:
        self.provisioned += 1


def test_a_running_service_that_asks_is_provisioned_again_and_others_are_left_alone() -> None:
    ctx = SimpleNamespace(settings=SimpleNamespace(start_timeout_s=1.0), ports={})
    database = RunningService("postgres", provision_when_running=True)
    realm = RunningService("keycloak", provision_when_running=False)
    said: list[str] = []
    group = cast("list[Service]", [database, realm])
    launcher._start_together(ctx, group, said.append)  # type: ignore[arg-type]
    assert database.provisioned == 1
    assert realm.provisioned == 0
    assert all("already running" in line for line in said)


def test_postgres_asks_to_be_provisioned_when_found_running() -> None:
    assert Postgres.provision_when_running is True


def test_every_database_is_taken_from_public_and_granted_to_its_role() -> None:
    statements = [s.as_string() for s in private_database("keycloak", "keycloak")]
    assert statements == [
        'REVOKE ALL ON DATABASE "keycloak" FROM PUBLIC',
        'GRANT CONNECT, TEMPORARY ON DATABASE "keycloak" TO "keycloak"',
    ]
    assert set(DATABASES) == {"orthanc_central", "indexer", "keycloak", "seaweedfs"}
    odd = private_database('we"ird', "o'wner")[1].as_string()
    assert odd == 'GRANT CONNECT, TEMPORARY ON DATABASE "we""ird" TO "o\'wner"'
