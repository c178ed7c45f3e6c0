"""The notification outbox: a message to the operators' alerting endpoint (a break-glass
alert so far), written in the same transaction as what it tells of, and delivered at least
once by whichever indexer node holds the delivery lease (services/outbox.py). The payload
holds ids and codes only, never personal data."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class Notification(Base):
    __tablename__ = "notification_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))


# what the deliverer reads: the undelivered ones, in the order they became due
Index(
    "ix_notification_outbox_due",
    Notification.next_attempt_at,
    postgresql_where=Notification.delivered_at.is_(None),
)
