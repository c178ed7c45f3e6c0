"""Access to another institution's study: a grant (who receives it, why, until when).

Kinds: `push` (the owner sent the study to another hospital, 跨院推送), `mutual-recognition`
(a treating clinician's 互认 lookup with a stated purpose, time-limited), `consent` (the
patient agreed), `break-glass` (emergency access by one named user, with a reason; it
raises an alert). A grant with `grantee_subject` is for that user only, otherwise for the
whole receiving institution. Grants are revocable; the gateway checks them for every
DICOMweb request.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

KINDS = ("push", "mutual-recognition", "consent", "break-glass")


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_study_grantee", "study_instance_uid", "institution_code"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    owner_institution: Mapped[str] = mapped_column(String(16))
    institution_code: Mapped[str] = mapped_column(String(16))  # who may now read it
    grantee_subject: Mapped[str | None] = mapped_column(String(128))  # one user only
    kind: Mapped[str] = mapped_column(String(24))
    purpose: Mapped[str | None] = mapped_column(String(200))
    granted_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
