"""services/ownership.py without a database: when an arrival may link an exam, and what
the refusal of another institution's study says."""

from __future__ import annotations

from indexer.errors import Conflict
from indexer.models import Exam, ImageStudy
from indexer.services import ownership


def test_an_exam_without_a_study_or_with_this_one_is_linked() -> None:
    study = ImageStudy(study_instance_uid="1.2.3", institution_code="H0001")
    assert ownership.may_relink(Exam(id=1, study_instance_uid=None), study)
    assert ownership.may_relink(Exam(id=1, study_instance_uid="1.2.3"), study)


def test_an_exam_with_another_study_is_not_moved(caplog) -> None:  # type: ignore[no-untyped-def]
    study = ImageStudy(study_instance_uid="1.2.4", institution_code="H0001")
    exam = Exam(id=7, exam_no="ACC-SECRET", study_instance_uid="1.2.3")
    assert not ownership.may_relink(exam, study)
    assert "ACC-SECRET" not in caplog.text  # the exam's id only, no accession no.


def test_the_refusal_names_the_field_and_why_and_is_a_conflict() -> None:
    refusal = ownership.ForeignStudy()
    assert isinstance(refusal, Conflict) and refusal.status == 409
    assert str(refusal).startswith("study_instance_uid: ")
    assert "another institution" in str(refusal)
