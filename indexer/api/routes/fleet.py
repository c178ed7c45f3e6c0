"""The gateway fleet (#15): the edges' heartbeats, configuration and upgrade polls, and
the operators' registry, rules documents and upgrade campaigns."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
