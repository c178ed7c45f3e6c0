import datetime as dt

import pytest

from indexer.services import national_id

# The example from GB 11643-1999 itself.
STANDARD_EXAMPLE = "11010519491231002X"


def test_standard_example_is_valid() -> None:
    assert national_id.normalize(STANDARD_EXAMPLE) == STANDARD_EXAMPLE
    assert national_id.birth_date(STANDARD_EXAMPLE) == dt.date(1949, 12, 31)
    assert national_id.sex(STANDARD_EXAMPLE) == "F"


def test_lower_case_x_and_whitespace_are_accepted() -> None:
    assert national_id.normalize(" 11010519491231002x ") == STANDARD_EXAMPLE


def test_wrong_check_character_is_refused_naming_the_rule() -> None:
    with pytest.raises(national_id.InvalidNationalId, match="check character"):
        national_id.normalize("110105194912310021")


def test_impossible_birth_date_is_refused() -> None:
    first17 = "11010519490231002"  # 31 February
    with pytest.raises(national_id.InvalidNationalId, match="birth date"):
        national_id.normalize(first17 + national_id.check_char(first17))


def test_future_birth_date_is_refused() -> None:
    first17 = f"110105{dt.date.today().year + 1}0101002"
    with pytest.raises(national_id.InvalidNationalId, match="out of range"):
        national_id.normalize(first17 + national_id.check_char(first17))


@pytest.mark.parametrize("bad", ["", "123", "11010519491231002Y", "1101051949123100211"])
def test_malformed_numbers_are_refused(bad: str) -> None:
    with pytest.raises(national_id.InvalidNationalId, match="18 characters"):
        national_id.normalize(bad)


def test_fifteen_digit_legacy_number_is_upgraded() -> None:
    # 15-digit form of the standard example: drop the century and the check character.
    assert national_id.normalize("110105491231002") == STANDARD_EXAMPLE


def test_error_messages_never_contain_the_number() -> None:
    with pytest.raises(national_id.InvalidNationalId) as info:
        national_id.normalize("110105194912310021")
    assert "110105" not in str(info.value)


def test_make_builds_valid_numbers() -> None:
    number = national_id.make("210102", dt.date(1980, 5, 17), 123)
    assert national_id.normalize(number) == number
    assert national_id.sex(number) == "M"


def test_mask_keeps_first_and_last_character_only() -> None:
    assert national_id.mask(STANDARD_EXAMPLE) == "1****************X"
    assert national_id.mask(None) is None
    assert national_id.mask("") is None


def test_masked_number_and_birth_date_do_not_rebuild_it() -> None:
    # The API answers the mask beside the birth date: the 6 + 4 mask of before hid only
    # the birth date, so the two together gave the number back.
    number = national_id.make("110101", dt.date(1990, 3, 7), 451)
    masked = national_id.mask(number)
    assert masked is not None and len(masked) == 18
    shown = [i for i, c in enumerate(masked) if c != "*"]
    assert shown == [0, 17]
    # What is left unknown beside the birth date: 5 region digits and the 3-digit
    # sequence, far too many numbers to guess.
    assert masked[1:6] == "*****" and masked[14:17] == "***"
