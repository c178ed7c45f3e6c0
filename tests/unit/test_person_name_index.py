"""The name blind index: one digest per spelling of a name, bound to the birth date, and
a search body that never looks a name up alone."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from pydantic import ValidationError

from indexer.schemas import PersonSearch
from indexer.security.pii import PiiCipher, name_digests, name_parts

BORN = dt.date(1990, 3, 7)


def cipher() -> PiiCipher:
    doc = PiiCipher.generate_document()
    keys = (base64.b64decode(doc["encryption_key"]), base64.b64decode(doc["blind_index_key"]))
    return PiiCipher("k1", 1, *keys)


SPELLINGS = ["马华", "马^华", " 马 华 ", "MA^HUA=马^华", "ＭＡ^ＨＵＡ=马^华"]


@pytest.mark.parametrize(
    "spelled", ["马华", "马^华", " 马 华 ", "MA^HUA=马^华", "ＭＡ^ＨＵＡ=马^华"]
)
def test_every_spelling_of_a_name_gives_one_digest(spelled: str) -> None:
    keys = cipher()
    assert name_parts(spelled) == ("马华", "马")
    assert name_digests(keys, spelled, BORN) == name_digests(keys, "马华", BORN)


def test_digests_hold_the_birth_date_and_the_key() -> None:
    keys = cipher()
    one = name_digests(keys, "马华", BORN)
    assert one != name_digests(keys, "马华", BORN + dt.timedelta(days=1))
    assert one != name_digests(cipher(), "马华", BORN)
    assert one["name"] != one["family"] and "马".encode() not in one["name"]
    assert name_parts("欧阳娜娜") == ("欧阳娜娜", "欧阳") and name_digests(keys, "^", BORN) == {}


@pytest.mark.parametrize(
    "body",
    [
        {"name": "马华"},
        {"family_name": "马"},
        {"name": "马华", "national_id": "11010519491231002X", "birth_date": "1990-03-07"},
        {"national_id": "11010519491231002X", "birth_date": "1990-03-07"},
        {},
    ],
)
def test_a_search_names_one_key_and_a_name_needs_the_birth_date(body: dict) -> None:
    with pytest.raises(ValidationError):
        PersonSearch.model_validate({"purpose": "复诊", **body})


def test_a_name_with_its_birth_date_is_a_search() -> None:
    found = PersonSearch.model_validate(
        {"purpose": "复诊", "name": "马华", "birth_date": "1990-03-07"}
    )
    assert found.national_id is None and found.birth_date == BORN
