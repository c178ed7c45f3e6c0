"""The edge's stores keep what they confirmed: every one syncs each commit (FULL, SQLite's
own default, which the records and the audit outbox had before the store base), and a
transaction whose COMMIT fails is rolled back, so later writes are not swallowed by it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from imgcloud.dicom_audit import AuditOutbox
from imgcloud.forward_queue import ForwardQueue
from imgcloud.retrieval import JobQueue
from imgcloud.sqlite_store import SqliteStore
from imgcloud.study_records import RecordStore

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL


def synchronous(store: SqliteStore) -> int:
    row = store.one("PRAGMA synchronous")
    assert row is not None
    return int(row[0])


def test_every_edge_store_syncs_each_commit(tmp_path: Path) -> None:
    same = lambda data, _binding: data  # noqa: E731
    stores: list[SqliteStore] = [
        ForwardQueue(tmp_path / "queue.sqlite"),
        JobQueue(tmp_path / "jobs.sqlite"),
        RecordStore(tmp_path / "records.sqlite", same, same),
        AuditOutbox(tmp_path / "audit.sqlite", same, same),
    ]
    assert {type(s).__name__: synchronous(s) for s in stores} == {
        "ForwardQueue": FULL,
        "JobQueue": FULL,
        "RecordStore": FULL,
        "AuditOutbox": FULL,
    }


class Linked(SqliteStore):
    migrations = (
        """
        CREATE TABLE parents (id TEXT PRIMARY KEY);
        CREATE TABLE children (
            id     TEXT PRIMARY KEY,
            parent TEXT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
        );
        """,
    )


def test_a_failed_commit_is_rolled_back_and_later_writes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "linked.sqlite"
    store = Linked(path)
    store.run("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as db:  # the deferred check fails at COMMIT
            db.execute("INSERT INTO children VALUES ('c1', 'nobody')")
    store.run("INSERT INTO parents VALUES ('p1')")  # autocommit again, not inside c1's
    with store.transaction() as db:
        db.execute("INSERT INTO children VALUES ('c2', 'p1')")
    store.close()
    with sqlite3.connect(path) as db:  # what another connection (a restart) sees
        assert db.execute("SELECT id FROM parents").fetchall() == [("p1",)]
        assert db.execute("SELECT id FROM children").fetchall() == [("c2",)]


def test_a_statement_error_inside_a_transaction_surfaces_as_itself(tmp_path: Path) -> None:
    store = Linked(tmp_path / "linked.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with store.transaction() as db:
            db.execute("INSERT INTO missing VALUES (1)")
    store.run("INSERT INTO parents VALUES ('p1')")
    assert store.one("SELECT count(*) FROM parents") == (1,)
