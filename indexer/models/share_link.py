"""Patient share links (云胶片): a time-limited, revocable link to one study that opens in
the viewer without an account. Only a hash of the link's secret is stored."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class ShareLink(Base):
    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    owner_institution: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
