"""互认 recognition decisions (#16): a clinician of one institution records whether a prior
exam of another institution is recognised, or not and why; and the rollup the statistics
read.

One decision per prior exam and deciding institution: recording again replaces it (the
audit trail keeps every recording). The rollup holds the count of current decisions per
month, institution and side (each decision counts once for the exam's institution, side
"exam", and once for the deciding one, side "deciding"), modality and outcome
("recognised" or the reason code); services/recognition.py keeps it in the same
transaction as the decision, so the statistics read a few thousand rows however many
decisions there are."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class RecognitionDecision(Base):
    __tablename__ = "recognition_decisions"
    __table_args__ = (
        UniqueConstraint("exam_id", "deciding_institution"),
        Index("ix_recognition_decisions_decided_at", "decided_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    exam_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("exams.id"))
    # copied from the exam when the decision is made: the statistics group by them
    exam_institution: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(16))
    deciding_institution: Mapped[str] = mapped_column(String(16))
    decided_by: Mapped[str] = mapped_column(String(128))  # the clinician's token subject
    recognised: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(32))  # "recognised" or the reason code
    reason_text: Mapped[str | None] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(200))
    period: Mapped[dt.date] = mapped_column(Date)  # first day of the decision's month
    decided_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class RecognitionRollup(Base):
    __tablename__ = "recognition_rollup"

    period: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    side: Mapped[str] = mapped_column(String(8), primary_key=True)  # "exam" or "deciding"
    institution_code: Mapped[str] = mapped_column(String(16), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    decisions: Mapped[int] = mapped_column(BigInteger)
