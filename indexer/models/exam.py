"""An exam (B2/E3), keyed by institution + exam no. (accession), with its state machine:
registered -> images-arriving -> images-complete -> reported (-> report-revised)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

STATES = ("registered", "images-arriving", "images-complete", "reported", "report-revised")


class Exam(Base):
    __tablename__ = "exams"
    __table_args__ = (
        UniqueConstraint("institution_code", "exam_no"),
        Index("ix_exams_person_time", "person_id", "exam_datetime"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    institution_code: Mapped[str] = mapped_column(
        String(16), ForeignKey("institutions.institution_code")
    )
    exam_no: Mapped[str] = mapped_column(String(64))
    exam_uid: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    patient_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("patients.id"), index=True)
    person_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("persons.person_id"))
    master_index_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    exam_type: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str | None] = mapped_column(String(128))
    device: Mapped[str | None] = mapped_column(String(128))
    requesting_department: Mapped[str | None] = mapped_column(String(128))
    exam_datetime: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_count: Mapped[int | None] = mapped_column(Integer)
    instance_count: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="registered")
    registered_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    images_arriving_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    images_complete_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    report_revised_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
