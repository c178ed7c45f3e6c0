"""Central's registry of instance hashes (imgcloud.instance_hashes): connection settings from
Orthanc's PostgreSQL section, hashes recorded, replaced, read and forgotten, and a database
failure reported as the plugin's own error with a fresh connection next time. A stand-in
pool lends stand-in connections that answer the SQL; the real pool is tried against a port
where no database listens; the real table is exercised by the integration tests (verify)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from imgcloud import instance_hashes
from imgcloud.central_schema import REVISION, VERSION_QUERY, VERSION_TABLE
from imgcloud.errors import ConfigurationError, PluginError
from imgcloud.instance_hashes import HashRegistry, central_conninfo

ORTHANC = {
    "PostgreSQL": {
        "EnableIndex": True,
        "Host": "db.local",
        "Port": "5433",
        "Database": "orthanc_central",
        "Username": "central",
        "Password": "secret",
    }
}
SHA_A, SHA_B = "a" * 64, "b" * 64


def test_conninfo_comes_from_orthancs_postgresql_section() -> None:
    assert central_conninfo(ORTHANC) == {
        "host": "db.local",
        "port": 5433,
        "dbname": "orthanc_central",
        "user": "central",
        "password": "secret",
        "connect_timeout": 10,
    }
    defaults = central_conninfo({"PostgreSQL": {"EnableIndex": True, "Database": "d"}})
    assert (defaults["host"], defaults["port"]) == ("localhost", 5432)


@pytest.mark.parametrize("configuration", [{}, {"PostgreSQL": {"EnableIndex": False}}])
def test_without_the_postgresql_index_central_refuses_naming_the_setting(
    configuration: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError, match=r"PostgreSQL\.EnableIndex"):
        central_conninfo(configuration)


class Database:
    """One imgcloud_instance_sha256 table shared by every connection made to it."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.connections: list[Connection] = []
        self.failing = False
        self.revisions: list[str] | None = [REVISION]  # None: no version table
        self.revision_checks = 0
        self.pools: list[Pool] = []

    def connect(self, **conninfo: Any) -> Connection:
        assert conninfo.get("autocommit") is True  # one statement, no open transaction
        conn = Connection(self)
        self.connections.append(conn)
        return conn


class Connection:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.closed = False
        self._row: tuple[str] | None = None
        self._rows: list[tuple[str]] = []

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def execute(self, sql: str, params: tuple[str, ...] = ()) -> Connection:
        if self.db.failing:
            self.closed = True  # as psycopg does when the server goes away
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        statement = " ".join(sql.split())
        if statement == VERSION_QUERY:
            self.db.revision_checks += 1
            if self.db.revisions is None:
                raise psycopg.errors.UndefinedTable(f'relation "{VERSION_TABLE}" does not exist')
            self._rows = [(r,) for r in self.db.revisions]
        elif statement.startswith("CREATE"):
            raise AssertionError("the plugin runs no DDL: the migrations make the tables")
        elif statement.startswith("INSERT INTO imgcloud_instance_sha256"):
            assert "ON CONFLICT (orthanc_id) DO UPDATE" in statement
            self.db.rows[params[0]] = params[1]
        elif statement.startswith("SELECT sha256 FROM imgcloud_instance_sha256"):
            found = self.db.rows.get(params[0])
            self._row = (found,) if found else None
        elif statement.startswith("DELETE FROM imgcloud_instance_sha256"):
            self.db.rows.pop(params[0], None)
        else:
            raise AssertionError(f"unexpected SQL: {statement[:80]}")
        return self

    def fetchone(self) -> tuple[str] | None:
        return self._row

    def fetchall(self) -> list[tuple[str]]:
        return self._rows


class Pool:
    """Stands in for psycopg_pool.ConnectionPool: lends an idle connection or makes one, and
    keeps only those still open when given back."""

    db: Database

    @staticmethod
    def check_connection(conn: object) -> None:
        pass

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.idle: list[Connection] = []
        self.closed = False
        self.db.pools.append(self)

    def wait(self, timeout: float) -> None:
        assert 0 < timeout <= 30

    def close(self) -> None:
        self.closed = True

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        assert not self.closed
        conn = self.idle.pop() if self.idle else self.db.connect(**self.options["kwargs"])
        try:
            yield conn
        finally:
            if not conn.closed:
                self.idle.append(conn)


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> Database:
    database = Database()
    monkeypatch.setattr(Pool, "db", database, raising=False)
    monkeypatch.setattr(instance_hashes, "ConnectionPool", Pool)
    return database


def test_the_tables_revision_is_checked_once_at_start(db: Database) -> None:
    HashRegistry.from_orthanc(ORTHANC)
    assert db.revision_checks == 1


@pytest.mark.parametrize(
    ("revisions", "expected"),
    [
        (None, f"not migrated .*needs revision {REVISION}: run .*alembic .*upgrade head"),
        ([], f"not migrated .*needs revision {REVISION}: run .*upgrade head"),
        (["0000"], f"at revision 0000, this release needs {REVISION}: run .*upgrade head"),
        (["9999"], f"at revision 9999, this release needs {REVISION}: .*newer release"),
    ],
)
def test_tables_at_another_revision_are_the_plugins_error_and_the_pool_closes(
    db: Database, revisions: list[str] | None, expected: str
) -> None:
    db.revisions = revisions
    with pytest.raises(PluginError, match=expected):
        HashRegistry.from_orthanc(ORTHANC)
    (pool,) = db.pools
    assert pool.closed


def test_a_hash_is_recorded_replaced_read_and_forgotten(db: Database) -> None:
    registry = HashRegistry.from_orthanc(ORTHANC)
    assert registry.lookup("oid-1") is None
    registry.record("oid-1", SHA_A)
    registry.record("oid-2", SHA_B)
    assert (registry.lookup("oid-1"), registry.lookup("oid-2")) == (SHA_A, SHA_B)
    registry.record("oid-1", SHA_B)  # stored again (a resend): the new copy's hash counts
    assert registry.lookup("oid-1") == SHA_B
    registry.forget("oid-1")
    assert registry.lookup("oid-1") is None and registry.lookup("oid-2") == SHA_B


def test_a_database_failure_is_the_plugins_error_and_the_next_call_reconnects(
    db: Database,
) -> None:
    registry = HashRegistry.from_orthanc(ORTHANC)
    registry.record("oid-1", SHA_A)
    before = len(db.connections)
    db.failing = True
    with pytest.raises(PluginError, match="oid-1") as recording:
        registry.record("oid-1", SHA_B)
    assert isinstance(recording.value.__cause__, psycopg.Error)
    with pytest.raises(PluginError, match="oid-1"):
        registry.lookup("oid-1")
    db.failing = False
    assert registry.lookup("oid-1") == SHA_A  # the failed write did not happen
    assert len(db.connections) > before  # a fresh connection, not the broken one


def test_forgetting_on_a_failing_database_is_the_plugins_error(db: Database) -> None:
    registry = HashRegistry.from_orthanc(ORTHANC)
    db.failing = True
    with pytest.raises(PluginError, match="oid-1") as forgetting:
        registry.forget("oid-1")
    assert isinstance(forgetting.value.__cause__, psycopg.Error)


def test_orthancs_threads_share_a_bounded_pool_closed_with_the_registry(db: Database) -> None:
    registry = HashRegistry.from_orthanc(ORTHANC)
    registry.record("oid-1", SHA_A)
    registry.lookup("oid-1")
    assert len(db.connections) == 1  # lent again, not one more per call
    (pool,) = db.pools
    assert pool.options["kwargs"]["autocommit"] is True
    assert pool.options["min_size"] == 1
    assert pool.options["max_size"] == instance_hashes.POOL_MAX_SIZE <= 8
    assert pool.options["timeout"] == instance_hashes.POOL_TIMEOUT_S <= 30
    assert pool.options["check"] is Pool.check_connection and pool.options["open"] is True
    registry.close()
    assert pool.closed


def test_no_database_within_the_timeout_is_the_plugins_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real pool, against a local port where nothing listens."""
    monkeypatch.setattr(instance_hashes, "POOL_TIMEOUT_S", 0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conninfo = {"host": "127.0.0.1", "port": port, "dbname": "central", "user": "central"}
    with pytest.raises(PluginError, match=r"no database connection within 0\.5 s") as caught:
        HashRegistry(conninfo | {"password": "secret", "connect_timeout": 1})
    assert "secret" not in str(caught.value) and "central" not in str(caught.value)
