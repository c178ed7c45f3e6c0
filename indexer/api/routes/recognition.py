"""互认 (#16): clinicians' recognition decisions on prior exams, and the statistics."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
