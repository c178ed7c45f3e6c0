"""Request and response bodies (snake_case JSON), validated field by field.

Invalid input is answered 422 with the field and the rule it breaks; values, and above all
ID and phone numbers, are never echoed back.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from .services import national_id

Sex = Literal["M", "F", "O", "U"]
UID = r"^[0-9]+(\.[0-9]+)*$"
CODE = r"^[A-Z0-9]{2,16}$"
KEY = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # MRN, exam no.
_PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,23}$")
# PostgreSQL text cannot hold NUL: refused at the door (422), not by the INSERT (500).
NO_NUL = r"^[^\x00]*$"


def _fits_in_utc(value: dt.datetime) -> dt.datetime:
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("is out of range (years 1-9999 once in UTC)") from None
    return value


# PostgreSQL keeps times in UTC: 0001-01-01T00:00+01:00 would be written, then never read back.
Timestamp = Annotated[AwareDatetime, AfterValidator(_fits_in_utc)]
ExamState = Literal[
    "registered", "images-arriving", "images-complete", "reported", "report-revised"
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValueError("must not contain NUL characters")
        return value


class PatientIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    national_id: str | None = Field(default=None, max_length=32)
    phone: str | None = Field(default=None, max_length=32)
    sex: Sex
    birth_date: dt.date | None = None
    age: int | None = Field(default=None, ge=0, le=150)
    chief_complaint: str | None = Field(default=None, max_length=2000)

    @field_validator("national_id")
    @classmethod
    def _national_id(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return national_id.normalize(value)
        except national_id.InvalidNationalId as exc:
            raise ValueError(f"not a valid GB 11643 number: {exc}") from None

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _PHONE.match(value):
            raise ValueError("must be digits, optionally with + - and spaces (5-24 characters)")
        return re.sub(r"[ -]", "", value)

    @field_validator("birth_date")
    @classmethod
    def _not_future(cls, value: dt.date | None) -> dt.date | None:
        if value is not None and value > dt.date.today():
            raise ValueError("is in the future")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PatientIn:
        if self.national_id and self.birth_date:
            if national_id.birth_date(self.national_id) != self.birth_date:
                raise ValueError("birth_date: does not match the birth date in national_id")
        return self


class ExamIn(Strict):
    patient_mrn: str = Field(pattern=KEY)
    exam_uid: uuid.UUID
    modality: str = Field(pattern=r"^[A-Z]{2,4}$")
    body_part: str | None = Field(default=None, max_length=64)
    exam_type: str | None = Field(default=None, max_length=64)
    method: str | None = Field(default=None, max_length=128)
    device: str | None = Field(default=None, max_length=128)
    requesting_department: str | None = Field(default=None, max_length=128)
    exam_datetime: Timestamp
    study_instance_uid: str | None = Field(default=None, pattern=UID, max_length=64)


class ReportIn(Strict):
    findings: str = Field(min_length=1, max_length=20000)
    impression: str = Field(min_length=1, max_length=20000)
    author: str = Field(min_length=1, max_length=128)
    reviewer: str | None = Field(default=None, max_length=128)
    approved_at: Timestamp
    exam_uid: uuid.UUID | None = None  # if given, must be the exam's
    patient_mrn: str | None = Field(default=None, pattern=KEY)  # if given, must be the exam's
    base_version: int | None = Field(
        default=None, ge=0, description="the version this revision replaces (stale: 409)"
    )


class PatientOut(BaseModel):
    institution_code: str
    mrn: str
    name: str
    national_id_masked: str | None = Field(description="first and last character only")
    phone_masked: str | None
    sex: str
    birth_date: dt.date | None
    age: int | None
    chief_complaint: str | None
    updated_at: dt.datetime


class Links(BaseModel):
    study: str
    series: str
    metadata: str
    qido: str
    viewer: str


class ExamOut(BaseModel):
    institution_code: str
    exam_no: str
    exam_uid: uuid.UUID
    patient_mrn: str
    master_index_id: str | None
    modality: str
    body_part: str | None
    exam_type: str | None
    method: str | None
    device: str | None
    requesting_department: str | None
    exam_datetime: dt.datetime
    state: ExamState
    state_times: dict[str, dt.datetime | None]
    study_instance_uid: str | None
    series_count: int | None
    instance_count: int | None
    links: Links | None


class ReportOut(BaseModel):
    institution_code: str
    exam_no: str
    version: int
    findings: str
    impression: str
    author: str
    reviewer: str | None
    approved_at: dt.datetime
    created_at: dt.datetime


class ReportHistory(BaseModel):
    current_version: int
    versions: list[ReportOut]


class WriteResult(BaseModel):
    outcome: Literal["created", "updated", "unchanged"]


class ExamWriteResult(WriteResult):
    exam: ExamOut


class ReportWriteResult(WriteResult):
    report: ReportOut


class MasterIndexOut(BaseModel):
    master_index_id: str
    exam: ExamOut
    report: ReportOut | None


class PersonSearch(Strict):
    """By national ID no., or by 汉字 name with birth date (a name alone finds no one):
    `name` (the full name) anywhere on the platform, `family_name` only among the caller's
    own institution's patients."""

    national_id: str | None = Field(default=None, max_length=32)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    family_name: str | None = Field(default=None, min_length=1, max_length=16)
    birth_date: dt.date | None = None
    purpose: str = Field(min_length=2, max_length=200, description="why the lookup is made")
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]] = Field(
        default_factory=list, max_length=16
    )
    body_part: str | None = Field(default=None, max_length=64)
    date_from: dt.date | None = None
    date_to: dt.date | None = Field(default=None, lt=dt.date.max)  # the window ends a day later
    limit: int = Field(default=100, ge=1, le=500)

    @field_validator("national_id")
    @classmethod
    def _national_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return national_id.normalize(value)
        except national_id.InvalidNationalId as exc:
            raise ValueError(f"not a valid GB 11643 number: {exc}") from None

    @model_validator(mode="after")
    def _window(self) -> PersonSearch:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from: must not be after date_to")
        keys = [k for k in ("national_id", "name", "family_name") if getattr(self, k)]
        if len(keys) != 1:
            raise ValueError("national_id, name, family_name: give exactly one of them")
        if keys != ["national_id"] and self.birth_date is None:
            raise ValueError("birth_date: required with a name (a name alone finds no one)")
        if keys == ["national_id"] and self.birth_date is not None:
            raise ValueError("birth_date: only with a name (the ID number holds it)")
        return self


class PersonExam(BaseModel):
    master_index_id: str | None
    institution_code: str
    institution_name: str
    exam_no: str
    modality: str
    body_part: str | None
    exam_datetime: dt.datetime
    state: ExamState
    study_instance_uid: str | None
    has_report: bool
    links: Links | None


class PersonExams(BaseModel):
    exams: list[PersonExam]


class StudyArrival(Strict):
    study_instance_uid: str = Field(pattern=UID, max_length=64)
    accession_number: str | None = Field(default=None, max_length=64)
    modalities: list[str] = Field(default_factory=list, max_length=16)
    series_count: int | None = Field(default=None, ge=0, le=2**31 - 1)  # PostgreSQL integer
    instance_count: int | None = Field(default=None, ge=0, le=2**31 - 1)
    complete: bool = False


class ArrivalResult(BaseModel):
    linked_exam_no: str | None
    reconciliation: bool


class UnmatchedStudy(BaseModel):
    study_instance_uid: str
    institution_code: str
    accession_number: str | None
    modalities: str | None
    instance_count: int | None
    first_seen: dt.datetime


class Resolve(Strict):
    exam_no: str = Field(pattern=KEY)


class InstitutionIn(Strict):
    name: str = Field(min_length=1, max_length=200)


class BulkPatient(PatientIn):
    mrn: str = Field(pattern=KEY)


class BulkExam(ExamIn):
    exam_no: str = Field(pattern=KEY)


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patients: list[dict[str, Any]] = Field(default_factory=list)
    exams: list[dict[str, Any]] = Field(default_factory=list)


class BulkItemResult(BaseModel):
    kind: Literal["patient", "exam"]
    key: str | None
    outcome: Literal["created", "updated", "unchanged", "error"]
    errors: list[dict[str, str]] | None = None


class BulkOut(BaseModel):
    results: list[BulkItemResult]
    counts: dict[str, int]
