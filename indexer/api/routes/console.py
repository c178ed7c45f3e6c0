"""The operator console (#15): server-rendered pages under /console."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
