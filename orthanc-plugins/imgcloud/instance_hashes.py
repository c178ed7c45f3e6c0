"""SHA-256 of every instance as central received it, recorded at store time in PostgreSQL.

Verification then compares hashes without reading files back: on Python plugin 4.0, reading
a file through the SDK from a REST callback holds the GIL while Orthanc may need locks that
another thread holds while it waits for the GIL inside our storage area. Shared by every
central Orthanc process (same database), so it scales with them.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from .errors import ConfigurationError, PluginError

SCHEMA = """
CREATE TABLE IF NOT EXISTS imgcloud_instance_sha256 (
    orthanc_id  TEXT PRIMARY KEY,
    sha256      CHAR(64) NOT NULL,
    stored_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


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


class HashRegistry:
    def __init__(self, conninfo: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._local = threading.local()
        with self._connect() as conn:
            conn.execute(SCHEMA)

    @classmethod
    def from_orthanc(cls, configuration: dict[str, Any]) -> HashRegistry:
        return cls(central_conninfo(configuration))

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(**self._conninfo, autocommit=True)

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
        return conn

    def record(self, orthanc_id: str, sha256: str) -> None:
        try:
            self._conn().execute(
                """INSERT INTO imgcloud_instance_sha256 (orthanc_id, sha256) VALUES (%s, %s)
                   ON CONFLICT (orthanc_id) DO UPDATE
                   SET sha256 = excluded.sha256, stored_at = now()""",
                (orthanc_id, sha256),
            )
        except psycopg.Error as exc:
            self._local.conn = None
            raise PluginError(f"cannot record the hash of instance {orthanc_id}") from exc

    def lookup(self, orthanc_id: str) -> str | None:
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT sha256 FROM imgcloud_instance_sha256 WHERE orthanc_id = %s",
                    (orthanc_id,),
                )
                .fetchone()
            )
        except psycopg.Error as exc:
            self._local.conn = None
            raise PluginError(f"cannot read the hash of instance {orthanc_id}") from exc
        return row[0] if row else None

    def forget(self, orthanc_id: str) -> None:
        self._conn().execute(
            "DELETE FROM imgcloud_instance_sha256 WHERE orthanc_id = %s", (orthanc_id,)
        )
