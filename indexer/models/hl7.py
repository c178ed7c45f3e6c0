"""HL7 v2 intake (#16): the journal of every message received, keyed by the sending
institution and the message's control ID (MSH-10).

The journal makes redelivery harmless: the first answer (ACK) is stored and replayed for
the same institution + control ID, whatever the listener that hears it again. A message
that names an unknown patient or exam (a sequence problem) is kept here for an operator,
its raw text encrypted like every other personal value (PiiCipher, context
"hl7_messages.raw"); the ACK and the reason hold no personal data (field locations and
rules only). A40 merges are recorded in hl7_merges (which MRN went into which).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

OUTCOMES = ("pending", "done", "refused", "problem", "resolved")


class Hl7Message(Base):
    __tablename__ = "hl7_messages"
    __table_args__ = (
        UniqueConstraint("institution_code", "control_id"),
        Index(
            "ix_hl7_messages_problems",
            "institution_code",
            "received_at",
            postgresql_where=text("outcome = 'problem'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    institution_code: Mapped[str] = mapped_column(
        String(16), ForeignKey("institutions.institution_code")
    )
    control_id: Mapped[str] = mapped_column(String(199))  # MSH-10
    message_type: Mapped[str] = mapped_column(String(16))  # e.g. ADT^A01
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))  # SHA-256 of the bytes
    outcome: Mapped[str] = mapped_column(String(16), server_default="pending")
    ack_code: Mapped[str | None] = mapped_column(String(2))  # AA, AE, AR
    ack: Mapped[str | None] = mapped_column(Text)  # the first ACK, replayed on redelivery
    reason: Mapped[str | None] = mapped_column(String(500))  # location and rule, no values
    raw_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # problems only, encrypted
    received_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Hl7Merge(Base):
    """An A40: the exams of `prior_mrn` moved to `surviving_mrn`, and prior_mrn removed."""

    __tablename__ = "hl7_merges"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    institution_code: Mapped[str] = mapped_column(
        String(16), ForeignKey("institutions.institution_code")
    )
    prior_mrn: Mapped[str] = mapped_column(String(64), index=True)
    surviving_mrn: Mapped[str] = mapped_column(String(64))
    exams_moved: Mapped[int] = mapped_column(BigInteger)
    control_id: Mapped[str] = mapped_column(String(199))
    merged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
