"""Master-index requests waiting for the regional platform (retried with backoff)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class PlatformRequest(Base):
    __tablename__ = "platform_requests"

    exam_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("exams.id"), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    last_error: Mapped[str | None] = mapped_column(String(300))
