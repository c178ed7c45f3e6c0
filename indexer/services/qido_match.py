"""QIDO query values that the central Orthanc (1.10.1) cannot be asked for, matched here.

Orthanc 1.10.1 does not percent-decode query values (`PatientName=MA%2A` matches the
literal `MA%2A`), and its HTTP server refuses a request line with raw non-ASCII bytes
(400). So a value goes to central only in raw characters it matches on (`SENDABLE`);
anything else (汉字, spaces, `%`, `&`, `#`, ...) is matched by the indexer on central's
answer. PatientName is always matched here: Orthanc keeps names in its identifier table
upper-cased with every non-ASCII byte dropped (`MA^HUA=马^华` becomes `MA^HUA=^`), so it
can match neither ideographic nor phonetic groups, nor an alphabetic group on its own.
When the name query has a plain ASCII group, central is still asked for a superset
(`*GROUP*`) so that the scan stays small.

PN matching (DICOM PS3.4 C.2.2.2, PS3.5 6.2): `*` any run, `?` one character,
case-insensitive. A query of one group matches if any group of the name matches (马*, 马华,
MA*, ma^hua); a query of several groups (`MA^HUA=*`) matches group by group, an empty or
`*` group matching anything. Trailing empty components are ignored, and a group also
matches with its components joined (马华 for 马^华).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..errors import InvalidRecord

PATIENT_NAME = "00100010"
# Raw characters that reach Orthanc 1.10.1 intact and mean to it what they mean to us.
SENDABLE = re.compile(r"[A-Za-z0-9*?^=.,:/_-]*")
KEY = re.compile(r"[A-Za-z0-9]{1,64}")
ASCII_GROUP = re.compile(r"[A-Za-z0-9^*.-]+")


def tag_of(key: str) -> str | None:
    """The 8-hex-digit tag a QIDO key names (keyword or tag), None if not an attribute."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    return f"{tag:08X}" if tag is not None else None


@lru_cache(maxsize=512)
def _pattern(query: str, fold: bool) -> re.Pattern[str]:
    regex = "".join({"*": ".*", "?": "."}.get(c) or re.escape(c) for c in query)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if fold else 0))


def wildcard_match(query: str, value: str, fold: bool = False) -> bool:
    if fold:
        query, value = query.casefold(), value.casefold()
    return _pattern(query, fold).fullmatch(value) is not None


def _norm(group: str) -> str:
    return unicodedata.normalize("NFKC", group).strip().rstrip("^").strip()


def _group_matches(query: str, group: str) -> bool:
    query, group = _norm(query), _norm(group)
    if query in ("", "*"):
        return True
    return wildcard_match(query, group, fold=True) or wildcard_match(
        query, group.replace("^", ""), fold=True
    )


def pn_groups(value: Any) -> list[str]:
    """[alphabetic, ideographic, phonetic] of a DICOM JSON PN value (or a PN string)."""
    if isinstance(value, str):
        groups = value.split("=")
    elif isinstance(value, dict):
        groups = [str(value.get(k) or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    else:
        return ["", "", ""]
    return [*groups, "", "", ""][:3]


def pn_matches(query: str, value: Any) -> bool:
    names = pn_groups(value)
    asked = query.split("=")
    if len(asked) > 3:
        return False
    if len(asked) == 1:
        if _norm(asked[0]) in ("", "*"):
            return True
        return any(_norm(g) and _group_matches(asked[0], g) for g in names)
    return all(_group_matches(q, g) for q, g in zip(asked, names, strict=False))


def prefilter(query: str) -> str | None:
    """A PatientName filter central can apply that keeps every study `pn_matches` would."""
    for group in query.split("="):
        group = _norm(group)
        if group.strip("*") and "?" not in group:
            # not plain ASCII (汉字...): central cannot narrow it, the indexer scans
            return "*" + group.strip("*") + "*" if ASCII_GROUP.fullmatch(group) else None
    return None


@dataclass(frozen=True)
class LocalFilter:
    tag: str
    query: str

    def matches(self, study: dict[str, Any]) -> bool:
        element = study.get(self.tag) or {}
        values = element.get("Value") or []
        if self.tag == PATIENT_NAME or element.get("vr") == "PN":
            return any(pn_matches(self.query, v) for v in values) or (
                not values and _norm(self.query) in ("", "*")
            )
        if not values:
            return self.query in ("", "*")
        return any(wildcard_match(self.query, str(v)) for v in values)


@dataclass(frozen=True)
class Split:
    central: list[tuple[str, str]]  # what central is asked (raw characters only)
    local: list[LocalFilter]  # what the indexer matches on central's answers


def split(params: Sequence[tuple[str, str]], control: frozenset[str]) -> Split:
    """Which filters central applies and which the indexer applies; bad keys get 422."""
    central: list[tuple[str, str]] = []
    local: list[LocalFilter] = []
    needed: list[str] = []
    for key, value in params:
        if not KEY.fullmatch(key):
            raise InvalidRecord("query", "a QIDO key must be an attribute keyword or tag")
        if key in control:
            if not SENDABLE.fullmatch(value):
                raise InvalidRecord(key, "has characters that are not allowed")
            central.append((key, value))
            continue
        tag = tag_of(key)
        is_pn = tag == PATIENT_NAME or (tag is not None and _vr(tag) == "PN")
        if tag is not None and (is_pn or not SENDABLE.fullmatch(value)):
            local.append(LocalFilter(tag, value))
            needed.append(tag)
            superset = prefilter(value) if is_pn else None
            if superset is not None:
                central.append((key, superset))
            continue
        if not SENDABLE.fullmatch(value):
            raise InvalidRecord(key, "has characters that are not allowed")
        central.append((key, value))
    if needed:
        central.append(("includefield", ",".join(needed)))
    return Split(central, local)


def _vr(tag: str) -> str | None:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None


def query_string(params: Sequence[tuple[str, str]]) -> bytes:
    """The raw query string central receives (each value already checked SENDABLE)."""
    for key, value in params:
        if not KEY.fullmatch(key) or not SENDABLE.fullmatch(value):
            raise InvalidRecord(key, "cannot be sent to the central archive")
    return "&".join(f"{k}={v}" for k, v in params).encode()
