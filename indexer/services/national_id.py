"""Resident identity card numbers (居民身份证号码), GB 11643-1999.

18 characters: 6-digit administrative region, 8-digit birth date (YYYYMMDD), 3-digit
sequence (odd for men, even for women) and a check character over the first 17 digits.
Legacy 15-digit numbers (2-digit year, no check character) are upgraded to 18.
"""

from __future__ import annotations

import datetime as dt
import re

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"
_RE18 = re.compile(r"^\d{17}[\dX]$")
_RE15 = re.compile(r"^\d{15}$")


class InvalidNationalId(ValueError):
    """The number breaks a rule of GB 11643; the message names the rule (never the number)."""


def check_char(first17: str) -> str:
    """The GB 11643 check character for 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise InvalidNationalId("the first 17 characters must be digits")
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def _birth_date(yyyymmdd: str) -> dt.date:
    try:
        born = dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()
    except ValueError as exc:
        raise InvalidNationalId("characters 7-14 are not a valid birth date") from exc
    if born.year < 1880 or born > dt.date.today():
        raise InvalidNationalId("the birth date (characters 7-14) is out of range")
    return born


def normalize(number: str) -> str:
    """Validate an ID number and return its 18-character form (legacy 15-digit upgraded)."""
    value = number.strip().upper()
    if _RE15.match(value):
        # 15-digit numbers were issued to people born in the 1900s.
        first17 = value[:6] + "19" + value[6:]
        _birth_date(first17[6:14])
        return first17 + check_char(first17)
    if not _RE18.match(value):
        raise InvalidNationalId("must be 18 characters (17 digits and a digit or X) or 15 digits")
    _birth_date(value[6:14])
    if check_char(value[:17]) != value[17]:
        raise InvalidNationalId("the check character (GB 11643) does not match")
    return value


def birth_date(number: str) -> dt.date:
    """Birth date encoded in a valid ID number."""
    return _birth_date(normalize(number)[6:14])


def sex(number: str) -> str:
    """'M' or 'F' from the sequence digit (odd: male)."""
    return "M" if int(normalize(number)[16]) % 2 else "F"


def mask(number: str | None) -> str | None:
    """The number as the API answers it: first and last character only, the rest starred.

    Characters 1-6 are the region and 7-14 the birth date, which the API answers beside it:
    a mask that kept them (e.g. 6 + 4) would give the number back to anyone holding the
    birth date and a guess of the region. GB 11643 masking keeps at most 1 + 1."""
    if not number:
        return None
    if len(number) <= 2:
        return "*" * len(number)
    return number[0] + "*" * (len(number) - 2) + number[-1]


def make(region: str, born: dt.date, sequence: int) -> str:
    """Build a valid 18-character number (used by the sample-data generator and tests)."""
    if not (len(region) == 6 and region.isdigit() and 0 <= sequence <= 999):
        raise InvalidNationalId("region must be 6 digits and sequence 0-999")
    first17 = f"{region}{born:%Y%m%d}{sequence:03d}"
    return first17 + check_char(first17)
