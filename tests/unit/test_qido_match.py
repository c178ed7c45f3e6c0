"""PN matching across groups and what central is asked in raw characters (qido_match)."""

from __future__ import annotations

import pytest

from indexer.errors import InvalidRecord
from indexer.services import qido
from indexer.services.qido_match import LocalFilter, pn_matches, prefilter, query_string, split

NAME = "MA^HUA=马^华"
JSON_NAME = {"Alphabetic": "MA^HUA", "Ideographic": "马^华"}


@pytest.mark.parametrize(
    "query", ["马*", "马华", "马^华", "MA*", "ma^hua", "MA^HUA", "MA^HUA=*", "=马*", NAME, "*hu?"]
)
def test_a_name_matches_in_every_group(query: str) -> None:
    assert pn_matches(query, NAME) and pn_matches(query, JSON_NAME)


@pytest.mark.parametrize("query", ["李*", "MA^HUA=李*", "MA", "马", "MA^HUAN", "a=b=c=d", "?"])
def test_other_names_do_not_match(query: str) -> None:
    assert not pn_matches(query, NAME)


def test_a_phonetic_group_matches_too() -> None:
    assert pn_matches("ma*", {"Alphabetic": "", "Phonetic": "MA^HUA"})


def test_central_gets_a_superset_only_for_plain_ascii_names() -> None:
    assert prefilter("ma^hua") == "*ma^hua*"
    assert prefilter("MA^HUA=*") == "*MA^HUA*"
    assert prefilter("马*") is None and prefilter("*") is None and prefilter("M?") is None


def test_split_sends_raw_ascii_and_matches_the_rest_here() -> None:
    asked = split(
        [("PatientName", "马*"), ("00100020", "MRN*"), ("StudyDescription", "CT胸部*")],
        qido.CONTROL_KEYS,
    )
    assert asked.central == [("00100020", "MRN*"), ("includefield", "00100010,00081030")]
    assert asked.local == [LocalFilter("00100010", "马*"), LocalFilter("00081030", "CT胸部*")]
    assert query_string(asked.central) == b"00100020=MRN*&includefield=00100010,00081030"
    study = {"00081030": {"vr": "LO", "Value": ["CT胸部平扫"]}}
    assert asked.local[1].matches(study) and not LocalFilter("00081030", "MR*").matches(study)


@pytest.mark.parametrize("params", [[("Patient Name", "x")], [("limit", "1 2")], [("a&b", "1")]])
def test_bad_keys_and_control_values_are_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRecord):
        split(params, qido.CONTROL_KEYS)
