"""The clinician's 互认 workspace (#16): server-rendered pages under /workspace."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
