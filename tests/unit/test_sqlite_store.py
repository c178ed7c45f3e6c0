"""The edge's SQLite store base: migrations are numbered in `user_version` and applied once,
a file from before the versioning opens with its rows, a failed step changes nothing, a
file from a newer release is refused, and every real store opens a 1.10.1-era file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from imgcloud.dicom_audit import AuditOutbox
from imgcloud.forward_queue import ForwardQueue
from imgcloud.retrieval import JobQueue
from imgcloud.sqlite_store import SqliteStore, StoreError, statements
from imgcloud.study_records import RecordStore

V1 = """
CREATE TABLE IF NOT EXISTS notes (
    note_id  TEXT PRIMARY KEY,
    body     TEXT NOT NULL   -- free text; may hold a ';' in a comment
);
"""


class Notes(SqliteStore):
    migrations = (V1,)


class NotesV2(SqliteStore):
    migrations = (V1, "ALTER TABLE notes ADD COLUMN seen INTEGER NOT NULL DEFAULT 0;")


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_new_file_gets_every_migration_and_its_number(tmp_path: Path) -> None:
    store = NotesV2(tmp_path / "notes.sqlite")
    store.run("INSERT INTO notes (note_id, body) VALUES (?, ?)", ("n1", "x'); DROP TABLE notes;--"))
    assert store.all("SELECT note_id, body, seen FROM notes") == [
        ("n1", "x'); DROP TABLE notes;--", 0)
    ]
    store.close()
    assert user_version(tmp_path / "notes.sqlite") == 2
    with sqlite3.connect(tmp_path / "notes.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_upgrade_applies_only_the_missing_steps_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    old = Notes(path)
    old.run("INSERT INTO notes (note_id, body) VALUES (?, ?)", ("n1", "kept"))
    old.close()
    assert user_version(path) == 1
    for _ in range(2):  # a second open applies nothing again (ALTER would fail twice)
        NotesV2(path).close()
    assert user_version(path) == 2
    assert NotesV2(path).all("SELECT note_id, body, seen FROM notes") == [("n1", "kept", 0)]


def test_a_failed_step_changes_nothing(tmp_path: Path) -> None:
    class Broken(SqliteStore):
        migrations = (V1, "ALTER TABLE notes ADD COLUMN a INTEGER; ALTER TABLE nowhere ADD b;")

    path = tmp_path / "notes.sqlite"
    Notes(path).close()
    with pytest.raises(StoreError, match="nowhere"):
        Broken(path)
    assert user_version(path) == 1
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(notes)")}
    assert columns == {"note_id", "body"}  # the first statement of the step was rolled back


def test_a_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    NotesV2(path).close()
    with pytest.raises(StoreError, match="newer than this release"):
        Notes(path)


def test_two_stores_opening_one_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            NotesV2(path).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert user_version(path) == 2


def test_statements_split_on_semicolons_outside_comments_and_strings() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT ';'); -- one; two\nCREATE INDEX i ON a (x);\n"
    assert len(list(statements(script))) == 2
    with pytest.raises(StoreError, match="not terminated"):
        list(statements("CREATE TABLE a (x TEXT)"))


# The schemas the 1.10.1-era edge wrote (no user_version), with a row in each.
LEGACY = {
    "queue.sqlite": (
        ForwardQueue,
        """CREATE TABLE studies (study_id TEXT PRIMARY KEY, state TEXT NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
             last_error TEXT, queued_at REAL NOT NULL, updated_at REAL NOT NULL,
             delivered_at REAL, instances INTEGER NOT NULL DEFAULT 0,
             bytes_sent INTEGER NOT NULL DEFAULT 0);
           CREATE TABLE instances (instance_id TEXT PRIMARY KEY, study_id TEXT NOT NULL,
             sop_uid TEXT NOT NULL, sha256 TEXT NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0);
           INSERT INTO studies (study_id, state, queued_at, updated_at)
             VALUES ('s1', 'failed', 1, 1);""",
    ),
    "jobs.sqlite": (
        JobQueue,
        """CREATE TABLE jobs (job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL,
             push_id TEXT UNIQUE, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
             not_before REAL NOT NULL DEFAULT 0, last_error TEXT, result TEXT,
             created_at REAL NOT NULL, updated_at REAL NOT NULL);
           INSERT INTO jobs (job_id, kind, params, state, created_at, updated_at)
             VALUES ('j1', 'fetch', '{}', 'queued', 1, 1);""",
    ),
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_a_file_from_before_the_versioning_opens_with_its_rows(tmp_path: Path, name: str) -> None:
    store_class, script = LEGACY[name]
    path = tmp_path / name
    with sqlite3.connect(path) as db:
        db.executescript(script)
    store = store_class(path)
    assert store.schema_version == 1 == user_version(path)
    if isinstance(store, ForwardQueue):
        status = store.status("s1")
        assert status is not None and status.state == "failed"
        store.enqueue("s2")  # the column streaming added exists now
        assert store.one("SELECT dirty FROM studies WHERE study_id = 's2'") == (0,)
    else:
        assert isinstance(store, JobQueue)
        job = store.get("j1")
        assert job is not None and job.kind == "fetch"


def test_the_sealed_stores_open_their_own_files_again(tmp_path: Path) -> None:
    same = lambda data, _binding: data  # noqa: E731
    for store_class, name in ((RecordStore, "records"), (AuditOutbox, "audit")):
        path = tmp_path / f"{name}.sqlite"
        store_class(path, same, same).close()
        store_class(path, same, same).close()
        assert user_version(path) == 1
