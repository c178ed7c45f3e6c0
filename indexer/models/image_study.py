"""Studies seen at the edge or central, linked to their exam by institution + accession
no.; a study matching no exam waits on the reconciliation list."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class ImageStudy(Base):
    __tablename__ = "image_studies"
    __table_args__ = (Index("ix_image_studies_accession", "institution_code", "accession_number"),)

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    institution_code: Mapped[str] = mapped_column(String(16), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    modalities: Mapped[str | None] = mapped_column(String(64))
    series_count: Mapped[int | None] = mapped_column(Integer)
    instance_count: Mapped[int | None] = mapped_column(Integer)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    exam_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("exams.id"), index=True)
    first_seen: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_seen: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
