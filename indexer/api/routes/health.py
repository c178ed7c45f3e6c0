"""Liveness and readiness."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ...db import get_session

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(session: Annotated[Session, Depends(get_session)]) -> dict[str, str]:
    """Healthy when the database answers and the schema is at a known migration."""
    try:
        revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise HTTPException(status_code=503, detail="database unavailable") from exc
    if not revision:
        raise HTTPException(status_code=503, detail="database schema not migrated")
    return {"status": "ok", "schema_revision": revision}
