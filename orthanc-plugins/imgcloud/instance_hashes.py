"""SHA-256 of every instance as central received it, recorded at store time in PostgreSQL.

Verification then compares hashes without reading files back: on Python plugin 4.0, reading
a file through the SDK from a REST callback holds the GIL while Orthanc may need locks that
another thread holds while it waits for the GIL inside our storage area. Shared by every
central Orthanc process (same database), so it scales with them.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .central_schema import check_revision
from .errors import ConfigurationError, PluginError

# The table imgcloud_instance_sha256 (orthanc_id, sha256, stored_at) comes from
# central-orthanc/migrations/ (revision 0001); open_pool checks its revision.


def central_conninfo(configuration: dict[str, Any]) -> dict[str, Any]:
    """Connection settings for central's own tables, from its Orthanc PostgreSQL section."""
    pg = configuration.get("PostgreSQL") or {}
    if not pg.get("EnableIndex"):
        raise ConfigurationError(
            "PostgreSQL.EnableIndex: central needs its PostgreSQL index for its own tables"
        )
    return {
        "host": pg.get("Host", "localhost"),
        "port": int(pg.get("Port", 5432)),
        "dbname": pg.get("Database"),
        "user": pg.get("Username"),
        "password": pg.get("Password"),
        "connect_timeout": 10,
    }


# A few connections per central Orthanc process, shared by its threads; a call waits at most
# POOL_TIMEOUT_S for one (then the plugin's error), and each is checked before it is lent.
POOL_MAX_SIZE = 4
POOL_TIMEOUT_S = 10.0


def open_pool(conninfo: dict[str, Any], name: str, **kwargs: Any) -> ConnectionPool:
    """A bounded, open pool of autocommit connections on tables at the revision this code
    needs; PluginError if no connection within the timeout or the tables are at another
    revision (the pool is closed on any failure)."""
    pool: ConnectionPool = ConnectionPool(
        kwargs={**conninfo, "autocommit": True, **kwargs},
        min_size=1,
        max_size=POOL_MAX_SIZE,
        timeout=POOL_TIMEOUT_S,
        check=ConnectionPool.check_connection,
        name=name,
        num_workers=1,
        open=True,
    )
    try:
        pool.wait(timeout=POOL_TIMEOUT_S)
    except psycopg.Error as exc:
        pool.close()
        raise PluginError(f"{name}: no database connection within {POOL_TIMEOUT_S:g} s") from exc
    try:
        with pool.connection() as conn:
            check_revision(conn)
    except BaseException:
        pool.close()
        raise
    return pool


class HashRegistry:
    def __init__(self, conninfo: dict[str, Any]) -> None:
        self._pool = open_pool(conninfo, "instance-hashes")

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> HashRegistry:
        return cls(central_conninfo(configuration))

    def close(self) -> None:
        self._pool.close()

    def record(self, orthanc_id: str, sha256: str) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute(
                    """INSERT INTO imgcloud_instance_sha256 (orthanc_id, sha256) VALUES (%s, %s)
                       ON CONFLICT (orthanc_id) DO UPDATE
                       SET sha256 = excluded.sha256, stored_at = now()""",
                    (orthanc_id, sha256),
                )
        except psycopg.Error as exc:
            raise PluginError(f"cannot record the hash of instance {orthanc_id}") from exc

    def lookup(self, orthanc_id: str) -> str | None:
        try:
            with self._pool.connection() as conn:
                row = conn.execute(
                    "SELECT sha256 FROM imgcloud_instance_sha256 WHERE orthanc_id = %s",
                    (orthanc_id,),
                ).fetchone()
        except psycopg.Error as exc:
            raise PluginError(f"cannot read the hash of instance {orthanc_id}") from exc
        return row[0] if row else None

    def forget(self, orthanc_id: str) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute(
                    "DELETE FROM imgcloud_instance_sha256 WHERE orthanc_id = %s", (orthanc_id,)
                )
        except psycopg.Error as exc:
            raise PluginError(f"cannot forget the hash of instance {orthanc_id}") from exc
