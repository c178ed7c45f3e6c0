"""The edge's one SQLite store base: a file per store, in WAL mode, with a busy timeout,
one connection shared under a lock, parameterised SQL only, and versioned migrations.

A store lists its `migrations`; the file's `PRAGMA user_version` says how many of them it
has had. Opening a store applies the missing ones, in one `BEGIN IMMEDIATE` transaction,
so two processes opening the same file at once apply each step once. Files written before
the versioning (user_version 0) hold the schema of migration 1, which is written to be
applied over them unchanged (`CREATE ... IF NOT EXISTS`, columns added only if absent).
A file from a newer release (a higher version than this code knows) is refused.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import PluginError

# A step: an SQL script (statements separated by `;`) or a function of the connection.
Migration = str | Callable[[sqlite3.Connection], None]
BUSY_TIMEOUT_S = 30.0
SYNCHRONOUS = ("NORMAL", "FULL")


class StoreError(PluginError):
    """An edge SQLite file cannot be opened or brought to this code's schema."""


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (`executescript` would commit)."""
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            yield script[start : end + 1].strip()
            start = end + 1
    rest = [line.strip() for line in script[start:].splitlines()]
    if any(line and not line.startswith("--") for line in rest):
        raise StoreError(f"an SQL statement is not terminated: {script[start:].strip()[:60]!r}")


def add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """Add a column unless the table has it already (files from before the versioning)."""
    if not table.isidentifier() or not column.isidentifier():
        raise StoreError(f"not an SQL name: {table!r}.{column!r}")
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if column not in columns:  # names checked above: DDL takes no parameters
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class SqliteStore:
    """Subclasses set `migrations` (and `synchronous`), then use `one/all/run/transaction`."""

    migrations: Sequence[Migration] = ()
    # FULL (SQLite's default): a commit is on disk before the call returns, so a power cut
    # cannot lose what a call confirmed; a store may opt down where that does not matter
    synchronous = "FULL"

    def __init__(self, path: Path) -> None:
        if self.synchronous not in SYNCHRONOUS:
            raise StoreError(f"synchronous={self.synchronous!r} is not one of {SYNCHRONOUS}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={self.synchronous}")  # one of SYNCHRONOUS
            self.schema_version = self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path.name}: {exc}") from exc

    def _migrate(self) -> int:
        with self.transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(self.migrations):
                raise StoreError(
                    f"{self.path.name} has schema version {version}, newer than this release "
                    f"knows ({len(self.migrations)})"
                )
            for number, step in enumerate(self.migrations[version:], start=version + 1):
                if callable(step):
                    step(db)
                else:
                    for statement in statements(step):
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(number)}")  # a pragma takes no ?
            return len(self.migrations)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Several statements as one (`BEGIN IMMEDIATE`: writers queue, readers do not)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (disk full, a deferred constraint) leaves the transaction
                # open: later autocommit writes would join it and be lost; an error SQLite
                # already rolled back leaves none, and ROLLBACK would hide the error
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement that changes rows; returns how many it changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
            return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SealedStore(SqliteStore):
    """A store whose rows hold personal data sealed with the edge's key ring (the seal binds
    each value to its row's key, so a sealed value moved to another row does not open)."""

    def __init__(
        self,
        path: Path,
        seal: Callable[[bytes, str], bytes],  # (plaintext, binding) -> sealed
        unseal: Callable[[bytes, str], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path)
        self.seal = seal
        self.unseal = unseal
        self.clock = clock
