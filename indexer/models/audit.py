"""The audit trail (G4, 等保2.0): append-only, hash-chained.

Each request writes one row at once (who, role, institution, action, the resource in
pseudonymised form, purpose, source address, outcome, time). A sealer then chains the rows
in id order: hash = SHA-256(previous hash || the row's canonical content). `python -m
indexer audit verify` recomputes the chain and names any row edited or removed. Triggers
refuse updates (other than sealing) and deletes (other than the retention purge).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    actor: Mapped[str] = mapped_column(String(128))  # Keycloak subject
    username: Mapped[str] = mapped_column(String(128))
    roles: Mapped[str] = mapped_column(String(200))
    institution: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(200))  # pseudonymised
    purpose: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
    prev_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditAnchor(Base):
    """Where verification starts after a retention purge: the last purged row's hash."""

    __tablename__ = "audit_anchor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    last_purged_id: Mapped[int] = mapped_column(BigInteger)
    last_purged_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    purged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
