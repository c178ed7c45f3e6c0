"""Security alerts for auditors and the owning institution (break-glass access so far).
The free-text reason may name a patient, so it is stored encrypted."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    actor: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(128))
    institution: Mapped[str | None] = mapped_column(String(16))
    owner_institution: Mapped[str] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    reason_enc: Mapped[bytes] = mapped_column(LargeBinary)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
