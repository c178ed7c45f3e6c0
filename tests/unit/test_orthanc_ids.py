"""Orthanc's identifiers from an instance's tags, and the bounded map from the C-STORE
filter to the change callback (imgcloud.orthanc_ids; checked against a real Orthanc in
tests/integration/test_orthanc_ids.py)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import pytest
from imgcloud.orthanc_ids import Arrivals, InstanceIds, orthanc_hash

TAGS = {
    "PatientID": "P1234",
    "StudyInstanceUID": "1.2.3",
    "SeriesInstanceUID": "1.2.3.4",
    "SOPInstanceUID": "1.2.3.4.5",
}


def test_the_hash_is_sha1_of_the_identifiers_joined_by_a_pipe_in_five_groups() -> None:
    digest = hashlib.sha1(b"P1234|1.2.3").hexdigest()  # noqa: S324 - Orthanc's own scheme
    expected = "-".join(digest[i : i + 8] for i in range(0, 40, 8))
    assert orthanc_hash("P1234", "1.2.3") == expected
    assert len(expected) == 44 and expected.count("-") == 4
    # non-ASCII identifiers are hashed as UTF-8 (Orthanc's DefaultEncoding is Utf8)
    utf8 = hashlib.sha1("患者|1.2".encode()).hexdigest()  # noqa: S324
    assert orthanc_hash("患者", "1.2").replace("-", "") == utf8


def test_instance_and_study_ids_from_the_simplified_tags() -> None:
    ids = InstanceIds.from_tags(TAGS)
    assert ids == InstanceIds(
        orthanc_hash("P1234", "1.2.3", "1.2.3.4", "1.2.3.4.5"), orthanc_hash("P1234", "1.2.3")
    )
    # a missing PatientID is the empty string, as in Orthanc
    without = {k: v for k, v in TAGS.items() if k != "PatientID"}
    assert InstanceIds.from_tags(without) == InstanceIds.from_tags(TAGS | {"PatientID": ""})
    assert InstanceIds.from_tags(without) != ids


@pytest.mark.parametrize(
    "broken",
    [{"SOPInstanceUID": ""}, {"SeriesInstanceUID": None}, {"StudyInstanceUID": ["1", "2"]},
     {"PatientID": ["a", "b"]}],
)  # fmt: skip
def test_no_ids_without_the_uids(broken: dict) -> None:
    assert InstanceIds.from_tags(TAGS | broken) is None
    assert InstanceIds.from_tags({}) is None


def ids(n: int) -> InstanceIds:
    return InstanceIds(f"i{n}", f"s{n}")


def test_an_arrival_is_taken_once_with_its_study_and_file() -> None:
    arrivals = Arrivals()
    arrivals.expect(ids(1), 3, lambda: b"abc")
    first = arrivals.take("i1")
    assert first is not None and (first.study, first.received) == ("s1", b"abc")
    assert arrivals.take("i1") is None  # once: a later NEW_INSTANCE asks Orthanc
    assert arrivals.take("never-seen") is None
    assert arrivals.held_bytes == 0


def test_the_map_is_bounded_in_entries_oldest_first() -> None:
    arrivals = Arrivals(entries=3)
    for n in range(5):
        arrivals.expect(ids(n), 0, None)
    assert len(arrivals) == 3
    assert arrivals.take("i0") is None and arrivals.take("i1") is None
    assert [arrivals.take(f"i{n}").study for n in (2, 3, 4)] == ["s2", "s3", "s4"]  # type: ignore[union-attr]


def test_files_over_the_byte_budget_are_not_copied_but_the_study_is_kept() -> None:
    arrivals = Arrivals(received_bytes=10)
    reads: list[int] = []

    def read(n: int, size: int) -> Callable[[], bytes]:
        def copy() -> bytes:
            reads.append(n)
            return b"x" * size

        return copy

    arrivals.expect(ids(1), 6, read(1, 6))
    arrivals.expect(ids(2), 6, read(2, 6))  # 12 > 10: not copied at all
    arrivals.expect(ids(3), 11, read(3, 11))  # larger than the whole budget
    assert reads == [1]
    assert arrivals.held_bytes == 6
    second, third = arrivals.take("i2"), arrivals.take("i3")
    assert second is not None and (second.study, second.received) == ("s2", None)
    assert third is not None and third.received is None
    first = arrivals.take("i1")
    assert first is not None and first.received == b"x" * 6
    assert arrivals.held_bytes == 0


def test_a_file_larger_than_announced_evicts_the_oldest_to_stay_in_budget() -> None:
    arrivals = Arrivals(received_bytes=10)
    arrivals.expect(ids(1), 5, lambda: b"a" * 5)
    arrivals.expect(ids(2), 4, lambda: b"b" * 9)  # announced 4, came 9: 14 > 10
    assert arrivals.held_bytes <= 10
    assert arrivals.take("i1") is None
    second = arrivals.take("i2")
    assert second is not None and second.received == b"b" * 9


def test_a_failed_copy_keeps_the_study_and_never_raises() -> None:
    arrivals = Arrivals()

    def broken() -> bytes:
        raise RuntimeError("the SDK failed")

    arrivals.expect(ids(1), 5, broken)  # the C-STORE must not fail for it
    entry = arrivals.take("i1")
    assert entry is not None and (entry.study, entry.received) == ("s1", None)
    assert arrivals.held_bytes == 0


def test_the_same_instance_again_replaces_its_entry_and_its_bytes() -> None:
    arrivals = Arrivals(received_bytes=100)
    arrivals.expect(ids(1), 5, lambda: b"a" * 5)
    arrivals.expect(ids(1), 7, lambda: b"b" * 7)
    assert len(arrivals) == 1 and arrivals.held_bytes == 7
    entry = arrivals.take("i1")
    assert entry is not None and entry.received == b"b" * 7


def test_filters_at_once_stay_within_the_budget() -> None:
    arrivals = Arrivals(received_bytes=64 * 10)
    gate = threading.Barrier(8)
    peak: list[int] = []

    def read() -> bytes:
        peak.append(arrivals.held_bytes)
        return b"x" * 64

    def filter_thread(n: int) -> None:
        gate.wait(5)
        for k in range(50):
            arrivals.expect(ids(n * 100 + k), 64, read)
            if k % 2:
                arrivals.take(f"i{n * 100 + k}")

    threads = [threading.Thread(target=filter_thread, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert max(peak) <= 64 * 10  # reserved before each copy
    assert arrivals.held_bytes <= 64 * 10
    assert arrivals.held_bytes == sum(
        len(e.received or b"") for e in (arrivals.take(f"i{n}") for n in range(800)) if e
    )


def test_an_entry_older_than_its_age_limit_is_not_used_and_goes() -> None:
    """A C-STORE whose store failed leaves an entry: a later arrival of the same instance
    by another way (a REST upload, a retrieval) must not get its bytes."""
    now = [100.0]
    arrivals = Arrivals(max_age_s=10.0, clock=lambda: now[0])
    arrivals.expect(ids(1), 3, lambda: b"old")  # its store failed: no change came
    now[0] = 105.0
    arrivals.expect(ids(2), 3, lambda: b"new")
    now[0] = 111.0  # i1 is 11 s old, i2 6 s
    assert arrivals.take("i1") is None  # too old: the change callback asks Orthanc
    assert len(arrivals) == 1 and arrivals.held_bytes == 3
    second = arrivals.take("i2")
    assert second is not None and second.received == b"new"
    arrivals.expect(ids(3), 3, lambda: b"abc")
    now[0] = 200.0
    assert arrivals.take("i9") is None and len(arrivals) == 0  # old ones go with any take
    assert arrivals.held_bytes == 0
