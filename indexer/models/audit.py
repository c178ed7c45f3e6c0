"""The audit trail (G4, 等保2.0): append-only, hash-chained.

Each access decision writes one row (who, role, institution, action, method, the resource
at its real level, the search filters pseudonymised, purpose, source address as the gateway
saw it, outcome, time; `count` > 1 only for identical granted repeats in one write batch).
The one sealer of the deployment then gives each committed row the next `seal_seq`, in the
order it finds them, and chains them in that order: hash = SHA-256(previous hash || the
row's canonical content). A row that commits late (a lower id after higher ones were
sealed) simply gets a later seal_seq. `python -m indexer audit verify` recomputes the chain,
names any row edited or removed, and any row left unsealed. Triggers refuse updates (other
than sealing) and deletes (other than the retention purge).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Uuid, func
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
    resource: Mapped[str | None] = mapped_column(String(512))  # pseudonymised
    purpose: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
    method: Mapped[str | None] = mapped_column(String(16))  # HTTP method, or C-FIND etc.
    filters: Mapped[str | None] = mapped_column(String(4000))  # JSON, pseudonymised
    count: Mapped[int] = mapped_column(Integer, server_default="1")
    calling_ae: Mapped[str | None] = mapped_column(String(16))  # edge DICOM operations
    called_ae: Mapped[str | None] = mapped_column(String(16))
    answers: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)  # an edge's event
    seal_seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    prev_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditAnchor(Base):
    """Where verification starts after a retention purge: the last purged row's hash."""

    __tablename__ = "audit_anchor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    last_purged_id: Mapped[int] = mapped_column(BigInteger)
    last_purged_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    last_purged_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    purged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
