"""The revision central's plugin code needs (imgcloud.central_schema): it is the head of
central's Alembic migrations, and a mismatch says what is wrong and what to run."""

from __future__ import annotations

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from imgcloud import central_schema
from imgcloud.central_schema import REVISION, check_revision, mismatch
from imgcloud.errors import PluginError

from deploy.stack.services.postgres import CENTRAL_MIGRATIONS
from deploy.stack.settings import REPO_ROOT


def test_the_revision_the_code_needs_is_the_migrations_head() -> None:
    scripts = ScriptDirectory.from_config(Config(str(REPO_ROOT / CENTRAL_MIGRATIONS)))
    assert scripts.get_heads() == [REVISION]


def test_the_migrations_keep_their_own_version_table_and_lock() -> None:
    env = (REPO_ROOT / CENTRAL_MIGRATIONS).with_name("env.py").read_text()
    assert "version_table=VERSION_TABLE" in env and "pg_advisory_xact_lock" in env
    assert central_schema.VERSION_TABLE != "alembic_version"  # the indexer's, not ours


def test_exactly_the_revision_needed_passes() -> None:
    assert mismatch([REVISION]) is None


@pytest.mark.parametrize(
    ("found", "says"),
    [
        ([], ["not migrated", f"needs revision {REVISION}", "upgrade head"]),
        (["0000"], [f"at revision 0000, this release needs {REVISION}: run", "upgrade head"]),
        (["9999"], ["at revision 9999", "newer release", "restore the backup"]),
        ([REVISION, "0002"], [f"at revision {REVISION}, 0002", "newer release"]),
    ],
)
def test_a_mismatch_says_what_is_wrong_and_what_to_run(found: list[str], says: list[str]) -> None:
    problem = mismatch(found)
    assert problem is not None and problem.startswith("central plugin tables ")
    for part in says:
        assert part in problem


class Answering:
    """A connection whose version query answers rows, or raises."""

    def __init__(self, rows: list | None = None, error: Exception | None = None) -> None:
        self.rows, self.error = rows or [], error

    def execute(self, sql: str) -> Answering:
        assert sql == central_schema.VERSION_QUERY
        if self.error:
            raise self.error
        return self

    def fetchall(self) -> list:
        return self.rows


def test_the_check_reads_tuple_and_dict_rows() -> None:
    check_revision(Answering([(REVISION,)]))  # type: ignore[arg-type]
    check_revision(Answering([{"version_num": REVISION}]))  # type: ignore[arg-type]


def test_no_version_table_is_not_migrated() -> None:
    missing = Answering(error=psycopg.errors.UndefinedTable("no such relation"))
    with pytest.raises(PluginError, match="not migrated"):
        check_revision(missing)  # type: ignore[arg-type]


def test_a_database_failure_while_checking_is_the_plugins_error() -> None:
    down = Answering(error=psycopg.OperationalError("server closed the connection"))
    with pytest.raises(PluginError, match="cannot read imgcloud_central_version") as caught:
        check_revision(down)  # type: ignore[arg-type]
    assert isinstance(caught.value.__cause__, psycopg.Error)
