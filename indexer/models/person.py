"""A person across institutions, identified by the national ID number (blind index only)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Date, DateTime, LargeBinary, String, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class Person(Base):
    __tablename__ = "persons"

    person_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    national_id_hmac: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    national_id_enc: Mapped[bytes] = mapped_column(LargeBinary)
    sex: Mapped[str] = mapped_column(String(1))  # from the ID number
    birth_date: Mapped[dt.date] = mapped_column(Date)  # from the ID number
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
