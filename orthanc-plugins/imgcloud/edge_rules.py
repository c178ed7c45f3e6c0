"""The edge's rules document: replaced at runtime (PUT), validated first, persisted.

    {"version": 3, "compression": "jpeg-ls-lossless", "forwarding_enabled": true,
     "forward_windows": [{"start": "20:00", "end": "06:00"}],
     "bandwidth_limit_mbps": 50,
     "pacs_pulls": [{"name": "recent", "source_aet": "HOSP_PACS", "every_minutes": 10,
                     "modalities": ["CT", "MR", "DX"], "days_back": 1}],
     "deliver_pushes_to": "HOSP_PACS", "push_poll_seconds": 10}

An invalid document is refused with a message naming each problem and the last good one
stays in force. Versions only move forward, so a late, older push from the cloud cannot
undo a newer one. Every field here is enforced by the edge.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .compression import CompressionPolicy

AE_TITLE = r"^[A-Za-z0-9_ -]{1,16}$"
MODALITY = r"^[A-Z]{2}$"


class RulesRejected(ValueError):
    """The proposed document is invalid; the message lists why."""


class TimeWindow(BaseModel):
    """Hours of the edge's local clock. A time with a UTC offset is refused: compared with
    the local (naive) time of day it would raise at every forwarding round."""

    model_config = ConfigDict(extra="forbid")
    start: dt.time
    end: dt.time

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: dt.time) -> dt.time:
        if value.tzinfo is not None:
            raise ValueError("a time of the edge's local clock, without a UTC offset (HH:MM)")
        return value

    def contains(self, moment: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # crosses midnight


class PacsPull(BaseModel):
    """A scheduled pull: every N minutes, C-FIND then C-MOVE recent studies from a PACS."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    source_aet: str = Field(pattern=AE_TITLE)
    every_minutes: int = Field(ge=1, le=10080)
    modalities: list[Annotated[str, Field(pattern=MODALITY)]] = Field(
        default_factory=list, max_length=16
    )
    days_back: int = Field(default=1, ge=0, le=31)


class EdgeRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, le=2**31 - 1)  # central keeps it in a 32-bit column
    compression: Literal["jpeg-ls-lossless", "jpeg-lossless", "jpeg2000-lossless", "keep"] = (
        "jpeg-ls-lossless"
    )
    forwarding_enabled: bool = True
    forward_windows: list[TimeWindow] = Field(default_factory=list, max_length=24)
    bandwidth_limit_mbps: float | None = Field(default=None, gt=0, le=100_000)
    pacs_pulls: list[PacsPull] = Field(default_factory=list, max_length=16)
    deliver_pushes_to: str | None = Field(default=None, pattern=AE_TITLE)
    push_poll_seconds: int = Field(default=10, ge=2, le=3600)

    @model_validator(mode="after")
    def _unique_pull_names(self) -> EdgeRules:
        names = [p.name for p in self.pacs_pulls]
        if len(names) != len(set(names)):
            raise ValueError("pacs_pulls: each pull needs its own name")
        return self

    def unknown_modalities(self, known: set[str]) -> list[str]:
        """AE titles the rules name that this edge has no DicomModalities entry for."""
        named = [p.source_aet for p in self.pacs_pulls]
        if self.deliver_pushes_to:
            named.append(self.deliver_pushes_to)
        return sorted({aet for aet in named if aet not in known})

    @property
    def compression_policy(self) -> CompressionPolicy:
        return CompressionPolicy.from_name(self.compression)

    def may_forward(self, now: dt.datetime) -> bool:
        """Forwarding allowed at this local time (no windows: always)."""
        if not self.forwarding_enabled:
            return False
        return not self.forward_windows or any(w.contains(now.time()) for w in self.forward_windows)


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "document"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class RulesStore:
    """The rules in force, kept in a JSON file beside the edge's state."""

    def __init__(
        self,
        path: Path,
        default_compression: str = "jpeg-ls-lossless",
        known_modalities: set[str] | None = None,
    ) -> None:
        self.path = path
        self.known_modalities = known_modalities
        self._lock = threading.Lock()
        if path.exists():
            self._rules = EdgeRules.model_validate_json(path.read_text())
        else:
            self._rules = EdgeRules(version=0, compression=default_compression)  # type: ignore[arg-type]

    @property
    def current(self) -> EdgeRules:
        return self._rules

    def replace(self, document: bytes | str) -> EdgeRules:
        """Validate and install a new document, or raise RulesRejected (nothing changes)."""
        try:
            proposed = EdgeRules.model_validate_json(document)
        except ValidationError as exc:
            raise RulesRejected(_explain(exc)) from None
        if self.known_modalities is not None:
            unknown = proposed.unknown_modalities(self.known_modalities)
            if unknown:
                raise RulesRejected(
                    f"AE titles not configured on this edge (DicomModalities): {', '.join(unknown)}"
                )
        with self._lock:
            if proposed.version <= self._rules.version:
                raise RulesRejected(
                    f"version: {proposed.version} is not newer than the rules in force "
                    f"(version {self._rules.version})"
                )
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(proposed.model_dump(mode="json"), indent=1))
            os.replace(tmp, self.path)
            self._rules = proposed
        return proposed
