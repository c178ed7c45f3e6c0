"""Access to another institution's study: a grant (who receives it, why, until when).

Kinds: `push` (the owner sent the study to another hospital, 跨院推送), `mutual-recognition`
(a treating clinician's 互认 lookup with a stated purpose, time-limited), `consent` (the
patient agreed), `break-glass` (emergency access by one named user, with a reason; it
raises an alert). A grant with `grantee_subject` is for that user only, otherwise for the
whole receiving institution. Grants are revocable; the gateway checks them for every
DICOMweb request.

One live (not revoked) grant per study, grantee institution, grantee user (or none) and
kind: a unique partial index, so concurrent creators cannot pile up copies. A new grant
of that key reuses the live one (`upsert`), and revoking it removes the access.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, String, and_, case, func, or_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.dml import ReturningInsert

from .base import Base

KINDS = ("push", "mutual-recognition", "consent", "break-glass")
LIVE_KEY = ("study_instance_uid", "institution_code", "grantee_subject", "kind")


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


Index(
    "uq_grants_live",
    *(Grant.__table__.c[name] for name in LIVE_KEY),
    unique=True,
    postgresql_where=Grant.revoked_at.is_(None),
    postgresql_nulls_not_distinct=True,  # one institution-wide grant (no subject) per key
)


def upsert(**values: Any) -> ReturningInsert[int]:
    """INSERT a grant, or reuse the live one of the same key: it then lasts until the later
    of the two expiries (none: no expiry). An expired live row is renewed by the new one's
    expiry, purpose and grantor. Returns the grant's id."""
    statement = insert(Grant).values(**values)
    new = statement.excluded
    expired = and_(Grant.expires_at.is_not(None), Grant.expires_at <= func.now())
    return statement.on_conflict_do_update(
        index_elements=list(LIVE_KEY),
        index_where=Grant.revoked_at.is_(None),
        set_={
            "expires_at": case(
                (expired, new.expires_at),
                (or_(Grant.expires_at.is_(None), new.expires_at.is_(None)), None),
                else_=func.greatest(Grant.expires_at, new.expires_at),
            ),
            "purpose": case((expired, new.purpose), else_=Grant.purpose),
            "granted_by": case((expired, new.granted_by), else_=Grant.granted_by),
        },
    ).returning(Grant.id)
