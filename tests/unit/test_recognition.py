"""互认 decisions and statistics (#16), the pure parts: the reason codes a decision takes,
the rate arithmetic, the statistics' lines, the CSV's spreadsheet-safe cells, and the
access decisions of services/access.py (互认)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from indexer.errors import InvalidRecord
from indexer.security.auth import Principal
from indexer.services import access as ar
from indexer.services import recognition, recognition_stats
from indexer.services.decision import WHOLE_ARCHIVE

CLIN_B = Principal("s1", "clinician.b", "H0002", frozenset({"clinician"}))
RAD_A = Principal("s2", "radiologist.a", "H0001", frozenset({"radiologist"}))
HADMIN_A = Principal("s3", "hadmin.a", "H0001", frozenset({"hospital-admin"}))
REGULATOR = Principal("s4", "regulator.demo", None, frozenset({"regulator"}))
ADMIN = Principal("s5", "platform.admin", "PLATFORM", frozenset({"platform-admin"}))
NO_PLACE = Principal("s6", "clinician.x", None, frozenset({"clinician"}))


def test_the_documented_reason_codes() -> None:
    assert list(recognition.REASONS) == [
        "image-quality",
        "too-old",
        "different-body-part",
        "condition-changed",
        "incomplete-study",
        "other",
    ]
    assert all(zh and en for zh, en in recognition.REASONS.values())


def test_a_recognised_exam_has_no_reason() -> None:
    assert recognition.choice(True, None, None) == recognition.Choice(True, "recognised", None)
    with pytest.raises(InvalidRecord) as caught:
        recognition.choice(True, "too-old", None)
    assert caught.value.field == "reason"


@pytest.mark.parametrize("code", [c for c in recognition.REASONS if c != "other"])
def test_each_reason_code_is_taken(code: str) -> None:
    assert recognition.choice(False, code, None) == recognition.Choice(False, code, None)


@pytest.mark.parametrize("code", [None, "", "recognised", "blurry", "TOO-OLD"])
def test_a_refusal_needs_a_listed_reason(code: str | None) -> None:
    with pytest.raises(InvalidRecord) as caught:
        recognition.choice(False, code, None)
    assert caught.value.field == "reason" and "image-quality" in str(caught.value)


def test_other_needs_a_text_and_keeps_it() -> None:
    for text in (None, "", "  ", "x"):
        with pytest.raises(InvalidRecord) as caught:
            recognition.choice(False, "other", text)
        assert caught.value.field == "reason_text"
    assert recognition.choice(False, "other", " 对比剂过敏史 ") == recognition.Choice(
        False, "other", "对比剂过敏史"
    )
    with pytest.raises(InvalidRecord):
        recognition.choice(False, "other", "x" * 201)


def test_the_purpose_is_a_listed_one_or_a_written_one() -> None:
    listed = recognition.PURPOSES[0]
    assert recognition.purpose_of(listed, "") == listed
    assert recognition.purpose_of(listed, " 急诊会诊 ") == "急诊会诊"
    assert recognition.purpose_of("", "") is None
    assert recognition.purpose_of("made up", "") is None  # not from the list
    assert recognition.purpose_of("", "x") is None  # too short to say anything


@pytest.mark.parametrize(
    ("recognised", "decisions", "expected"),
    [(0, 0, None), (0, 3, 0.0), (3, 3, 1.0), (1, 3, 0.3333), (2, 3, 0.6667), (5, 8, 0.625)],
)
def test_rate_arithmetic(recognised: int, decisions: int, expected: float | None) -> None:
    assert recognition_stats.rate(recognised, decisions) == expected


DEC = dt.date(2026, 12, 1)
NOV = dt.date(2026, 11, 1)
ROWS = [
    (NOV, "H0001", "Demo Hospital A", "CT", "recognised", 7),
    (NOV, "H0001", "Demo Hospital A", "CT", "too-old", 2),
    (NOV, "H0001", "Demo Hospital A", "CT", "image-quality", 1),
    (DEC, "H0001", "Demo Hospital A", "CT", "recognised", 1),
    (DEC, "H0002", "Demo Hospital B", "MR", "other", 3),
]


def test_statistics_lines_and_totals() -> None:
    answer = recognition_stats.summarise(ROWS)
    lines = {(r["period"], r["institution_code"], r["modality"]): r for r in answer["rows"]}
    assert list(lines) == [("2026-11", "H0001", "CT"), ("2026-12", "H0001", "CT"),
                           ("2026-12", "H0002", "MR")]  # fmt: skip
    nov = lines[("2026-11", "H0001", "CT")]
    assert (nov["decisions"], nov["recognised"], nov["not_recognised"], nov["rate"]) == (
        10, 7, 3, 0.7,
    )  # fmt: skip
    assert nov["reasons"]["too-old"] == 2 and nov["reasons"]["image-quality"] == 1
    assert lines[("2026-12", "H0002", "MR")]["rate"] == 0.0
    totals = answer["totals"]
    assert (totals["decisions"], totals["exams_not_repeated"], totals["not_recognised"]) == (
        14, 8, 6,
    )  # fmt: skip
    assert totals["rate"] == round(8 / 14, 4)
    assert totals["reasons"] == {
        "image-quality": 1, "too-old": 2, "different-body-part": 0, "condition-changed": 0,
        "incomplete-study": 0, "other": 3,
    }  # fmt: skip


def test_no_decisions_no_rate() -> None:
    assert recognition_stats.summarise([])["totals"]["rate"] is None


def test_statistics_hold_no_patient_fields() -> None:
    line = recognition_stats.summarise(ROWS)["rows"][0]
    assert set(line) == {
        "period", "institution_code", "institution_name", "modality", "decisions",
        "recognised", "not_recognised", "rate", "reasons",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("Demo Hospital A", "Demo Hospital A"),
        ("第一人民医院", "第一人民医院"),
        (0.625, "0.625"),
        (None, ""),
    ],
)
def test_a_cell_never_becomes_a_formula(value: object, shown: str) -> None:
    assert recognition_stats.cell(value) == shown


def test_the_csv_reads_back_with_safe_cells() -> None:
    rows = [(DEC, "H0009", '=cmd|"/c calc"!A1', "CT", "recognised", 2)]
    text = recognition_stats.to_csv(recognition_stats.summarise(rows))
    assert text.startswith("\ufeff")
    header, line = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert header[:8] == list(recognition_stats.CSV_COLUMNS)
    assert header[8:] == [f"reason:{c}" for c in recognition.REASONS]
    assert line[:8] == ["2026-12", "H0009", '\'=cmd|"/c calc"!A1', "CT", "2", "2", "0", "1.0"]
    assert not any(cell.startswith(recognition_stats.FORMULA_STARTS) for cell in line)


def test_month_parsing() -> None:
    assert recognition_stats.month("2026-12") == DEC
    assert recognition_stats.month("") is None
    with pytest.raises(ValueError):
        recognition_stats.month("2026-13")


def test_the_statistics_read_one_side_of_the_rollup_only() -> None:
    assert "recognition_decisions" not in recognition_stats.STATS_SQL
    assert "r.side = %(side)s" in recognition_stats.STATS_SQL
    assert recognition_stats.Query("H0001", "deciding").params()["side"] == "deciding"


# --- access decisions --------------------------------------------------------------------


def test_a_clinician_records_on_another_hospitals_exam_for_their_own() -> None:
    decision = ar.may_record_recognition(CLIN_B, "H0001")
    assert decision and decision.scope == "H0002"
    assert ar.may_record_recognition(RAD_A, "H0002").scope == "H0001"


def test_no_decision_on_ones_own_hospitals_exam() -> None:
    decision = ar.may_record_recognition(RAD_A, "H0001")
    assert not decision and decision.status == 422 and decision.field == "master_index_id"


@pytest.mark.parametrize("who", [HADMIN_A, REGULATOR, ADMIN, NO_PLACE])
def test_only_treating_staff_of_a_hospital_record(who: Principal) -> None:
    decision = ar.may_record_recognition(who, "H0009")
    assert not decision and decision.status == 403


def test_statistics_scopes() -> None:
    assert ar.may_read_recognition_statistics(REGULATOR, None).scope == WHOLE_ARCHIVE
    assert ar.may_read_recognition_statistics(REGULATOR, "H0002").scope == WHOLE_ARCHIVE
    assert ar.may_read_recognition_statistics(HADMIN_A, None).scope == "H0001"
    assert ar.may_read_recognition_statistics(HADMIN_A, "H0001").scope == "H0001"
    assert not ar.may_read_recognition_statistics(HADMIN_A, "H0002")  # another hospital's
    for who in (CLIN_B, RAD_A, ADMIN):
        assert not ar.may_read_recognition_statistics(who, None)


def test_mrn_search_is_confined_to_the_own_hospital() -> None:
    assert ar.may_search_by_own_mrn(CLIN_B).scope == "H0002"
    for who in (HADMIN_A, REGULATOR, NO_PLACE):
        assert not ar.may_search_by_own_mrn(who)
