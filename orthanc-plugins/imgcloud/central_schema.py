"""Which revision of central's plugin tables this code needs, and the check the registries
make at open. The tables come from the Alembic migrations in central-orthanc/migrations/,
which the launcher runs once before any central Orthanc starts (a site runs UPGRADE itself);
the plugin runs no DDL, so central nodes starting at the same moment never race on it.

Kept apart from Alembic: the plugins' Python needs only psycopg to read the version table.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import PluginError

REVISION = "0002"  # the Alembic head this release's SQL is written for (a unit test checks)
VERSION_TABLE = "imgcloud_central_version"  # ours, not alembic_version: Orthanc's database
VERSION_QUERY = f"SELECT version_num FROM {VERSION_TABLE}"  # noqa: S608 - a constant
# Held by every migration run for its whole transaction: the first run migrates, the others
# wait and then find nothing to do. The number the previous release's plugin schema took.
ADVISORY_LOCK = 7411
UPGRADE = (
    "IMGCLOUD_CENTRAL_DATABASE_URL=postgresql+psycopg://orthanc_central:...@HOST/orthanc_central"
    " .venv/bin/alembic -c central-orthanc/migrations/alembic.ini upgrade head"
)


def _revisions(conn: psycopg.Connection[Any]) -> list[str]:
    """The revisions the version table records; none when the table is absent."""
    try:
        rows = conn.execute(VERSION_QUERY).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    # the registries' pools give tuples or dicts
    return sorted(str(r["version_num"] if isinstance(r, dict) else r[0]) for r in rows)


def mismatch(found: list[str], needed: str = REVISION) -> str | None:
    """What is wrong with the recorded revisions `found`, and what to do; None if right."""
    if found == [needed]:
        return None
    if not found:
        return (
            f"central plugin tables are not migrated ({VERSION_TABLE} is missing or empty), "
            f"this release needs revision {needed}: run {UPGRADE}"
        )
    at = ", ".join(found)
    if max(found) < needed:
        return (
            f"central plugin tables are at revision {at}, this release needs {needed}: "
            f"run {UPGRADE}"
        )
    return (
        f"central plugin tables are at revision {at}, this release needs {needed}: the database "
        "was migrated by a newer release; run that release, or restore the backup taken before "
        "(docs/upgrade.md, Rollback)"
    )


def check_revision(conn: psycopg.Connection[Any]) -> None:
    """PluginError, saying what to run, unless the tables are at exactly REVISION."""
    try:
        found = _revisions(conn)
    except psycopg.Error as exc:
        raise PluginError(f"cannot read {VERSION_TABLE}: {type(exc).__name__}") from exc
    problem = mismatch(found)
    if problem:
        raise PluginError(problem)
