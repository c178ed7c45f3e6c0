"""Requests the edge's REST API accepts from the hospital: fetch back, PACS pull, push.

Validated with pydantic; a refused request gets a 422 naming each field and rule.
"""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .edge_rules import AE_TITLE, MODALITY

UID = r"^[0-9]+(\.[0-9]+)*$"
INSTITUTION = r"^[A-Z0-9]{2,16}$"


class RequestRejected(ValueError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class FetchRequest(BaseModel):
    """回溯: bring a study from the cloud to this edge, optionally on to a hospital AE."""

    model_config = ConfigDict(extra="forbid")
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    deliver_to: str | None = Field(default=None, pattern=AE_TITLE)


class PacsPullRequest(BaseModel):
    """C-FIND at a hospital PACS with these criteria, then C-MOVE the studies here."""

    model_config = ConfigDict(extra="forbid")
    source_aet: str = Field(pattern=AE_TITLE)
    study_instance_uid: str | None = Field(default=None, pattern=UID, max_length=64)
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    accession_number: str | None = Field(default=None, min_length=1, max_length=16)
    modalities: list[str] = Field(default_factory=list, max_length=16)
    study_date: str | None = Field(default=None, pattern=r"^\d{8}(-\d{8})?$")
    days_back: int | None = Field(default=None, ge=0, le=31)

    @model_validator(mode="after")
    def _has_criteria(self) -> PacsPullRequest:
        for modality in self.modalities:
            if not _matches(MODALITY, modality):
                raise ValueError(f"modalities: {modality!r} is not a modality code such as CT")
        if not any(
            (
                self.study_instance_uid,
                self.patient_id,
                self.accession_number,
                self.study_date,
                self.days_back is not None,
            )
        ):
            raise ValueError(
                "give at least one of study_instance_uid, patient_id, accession_number, "
                "study_date, days_back (a pull of the whole PACS is refused)"
            )
        return self


class PushRequest(BaseModel):
    """跨院推送: send a study already in the cloud to another hospital."""

    model_config = ConfigDict(extra="forbid")
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    to_institution: str = Field(pattern=INSTITUTION)
    deliver_to: str | None = Field(default=None, pattern=AE_TITLE)
    requested_by: str | None = Field(default=None, max_length=128)


def _matches(pattern: str, value: str) -> bool:
    return re.match(pattern, value) is not None


T = TypeVar("T", bound=BaseModel)


def parse(model: type[T], body: bytes | str) -> T:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "body"
            parts.append(f"{where}: {error['msg']}")
        raise RequestRejected("; ".join(parts)) from None
