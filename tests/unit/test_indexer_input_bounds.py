"""Input the database cannot hold is refused by validation (422), not by PostgreSQL (500);
each case here was found by tests/integration/test_api_fuzz.py or next to what it found."""

import datetime as dt
import uuid

import pytest
from pydantic import ValidationError

from indexer.schemas import ExamIn, InstitutionIn, PersonSearch, ReportIn, StudyArrival
from indexer.services.audit import WIDTHS, event


def test_nul_characters_are_refused_in_text_and_in_lists_of_text() -> None:
    with pytest.raises(ValidationError, match="must not contain NUL"):
        InstitutionIn(name="General\x00Hospital")
    with pytest.raises(ValidationError, match="must not contain NUL"):
        StudyArrival(study_instance_uid="1.2.3", modalities=["CT", "M\x00R"])
    assert InstitutionIn(name="General Hospital").name == "General Hospital"


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"])
def test_times_outside_years_1_to_9999_in_utc_are_refused(when: str) -> None:
    exam = {"patient_mrn": "P1", "exam_uid": str(uuid.uuid4()), "modality": "CT"}
    with pytest.raises(ValidationError, match="out of range"):
        ExamIn.model_validate({**exam, "exam_datetime": when})
    with pytest.raises(ValidationError, match="out of range"):
        ReportIn.model_validate(
            {"findings": "f", "impression": "i", "author": "a", "approved_at": when}
        )
    assert ExamIn.model_validate({**exam, "exam_datetime": "0001-01-01T00:00:00Z"})


def test_a_person_search_window_cannot_end_on_the_last_representable_day() -> None:
    search = {"national_id": "11010519491231002X", "purpose": "p1"}
    with pytest.raises(ValidationError, match="date_to"):
        PersonSearch.model_validate({**search, "date_to": dt.date.max.isoformat()})
    assert PersonSearch.model_validate({**search, "date_to": "9999-12-30"})


def test_audit_records_always_fit_their_columns() -> None:
    record = event(None, "api.get_exam", "exam:H0001/" + "A" * 500, "10.0.0.1", 401, "p\x00" * 150)
    for column, width in WIDTHS.items():
        value = record[column]
        assert value is None or (len(value) <= (width or 0) and "\x00" not in value), column
    assert record["resource"].startswith("exam:H0001/AAA")


def test_counts_fit_a_postgresql_integer() -> None:
    with pytest.raises(ValidationError, match="series_count"):
        StudyArrival(study_instance_uid="1.2.3", series_count=2**31)
    assert StudyArrival(study_instance_uid="1.2.3", instance_count=2**31 - 1)
