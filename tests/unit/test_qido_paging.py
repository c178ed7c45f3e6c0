"""QIDO paging (indexer.services.qido): limit and offset are checked; an open search pages
through what the reader may read, newest first, and asks central by UID list; a filtered
search scans central in bounded batches and pages after the filter, so neither a count nor
a page tells anything of studies the reader may not read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from indexer.errors import InvalidRecord
from indexer.services import qido
from indexer.services.qido import Reader, paging, search_for_reader

READER = Reader("H0001", "subject-of-a")


def study(uid: str, patient_id: str = "P1", name: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        qido.STUDY_UID_TAG: {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100010": {"vr": "PN", "Value": [name or {"Alphabetic": "LI^MING"}]},
    }


def uids_of(studies: list[dict[str, Any]]) -> list[str]:
    return [str(qido.study_uid(s)) for s in studies]


class FakeCentral:
    """Central's QIDO-RS over a fixed list: a UID list, PatientID, limit and offset."""

    def __init__(self, studies: list[dict[str, Any]]) -> None:
        self.held = studies
        self.asked: list[list[tuple[str, str]]] = []

    async def studies(self, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        self.asked.append(list(params))
        given = dict(params)
        found = self.held
        if "StudyInstanceUID" in given:
            wanted = given["StudyInstanceUID"].split(",")
            found = [s for s in found if qido.study_uid(s) in wanted]
        if "PatientID" in given:
            found = [s for s in found if s["00100020"]["Value"][0] == given["PatientID"]]
        offset = int(given.get("offset", "0"))
        limit = int(given["limit"]) if "limit" in given else len(found)
        return found[offset : offset + limit]


class FakePool:
    """The indexer's tables as far as the search reads them: the reader's readable studies,
    newest first (the SQL's own order and filter are the database's business)."""

    def __init__(self, readable_newest_first: list[str]) -> None:
        self.readable = readable_newest_first
        self.queries: list[dict[str, Any]] = []

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[FakePool]:
        yield self

    async def execute(self, sql: str, params: dict[str, Any]) -> FakePool:
        self.queries.append(params)
        if "uids" in params:
            self._rows = [(u,) for u in self.readable if u in params["uids"]]
        else:
            start = params["offset"]
            self._rows = [(u,) for u in self.readable[start : start + params["limit"]]]
        return self

    async def fetchall(self) -> list[tuple[str]]:
        return self._rows


def search(
    central: FakeCentral,
    pool: FakePool,
    params: list[tuple[str, str]],
    reader: Reader | None = READER,
    max_matches: int = 1000,
) -> list[str]:
    page = asyncio.run(
        search_for_reader(central, pool, reader, params, max_matches)  # type: ignore[arg-type]
    )
    return uids_of(page.studies)


# -- limit and offset ---------------------------------------------------------------------


def test_paging_defaults_and_bounds() -> None:
    assert paging([]) == (qido.DEFAULT_LIMIT, 0)
    assert paging([("limit", "25"), ("offset", "50")]) == (25, 50)
    assert paging([("limit", "0")]) == (qido.MAX_LIMIT, 0)  # 0: as many as allowed
    assert paging([("limit", str(qido.MAX_LIMIT + 1))]) == (qido.MAX_LIMIT, 0)
    assert paging([("PatientID", "12"), ("fuzzymatching", "false")]) == (qido.DEFAULT_LIMIT, 0)


@pytest.mark.parametrize(
    ("key", "raw"),
    [("limit", "-1"), ("limit", "ten"), ("offset", "1e3"), ("offset", "1234567890"), ("limit", "")],
)
def test_a_bad_limit_or_offset_is_refused_naming_it(key: str, raw: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        paging([(key, raw)])
    assert caught.value.field == key and caught.value.status == 422


def test_only_control_keys_make_an_open_search() -> None:
    assert qido.is_open([("limit", "10"), ("includefield", "00081030")])
    assert not qido.is_open([("limit", "10"), ("PatientID", "P1")])


# -- an open search: the reader's readable studies, newest first ----------------------------


def test_an_open_search_pages_the_readable_studies_in_their_order() -> None:
    readable = [f"1.2.{n}" for n in range(10)]
    central = FakeCentral([study(u) for u in reversed(readable)])  # central's order differs
    pool = FakePool(readable)
    assert search(central, pool, [("limit", "4"), ("offset", "0")]) == readable[:4]
    assert search(central, pool, [("limit", "4"), ("offset", "8")]) == readable[8:]
    assert search(central, pool, [("limit", "4"), ("offset", "10")]) == []
    assert [q["offset"] for q in pool.queries] == [0, 8, 10]  # paged in the database


def test_an_open_search_asks_central_by_uid_list_in_bounded_calls() -> None:
    readable = [f"1.3.{n}" for n in range(120)]
    central = FakeCentral([study(u) for u in readable])
    pool = FakePool(readable)
    found = search(central, pool, [("limit", "120"), ("includefield", "00081030")])
    assert found == readable
    sizes = [len(dict(a)["StudyInstanceUID"].split(",")) for a in central.asked]
    assert sizes == [50, 50, 20] and max(sizes) <= qido.UIDS_PER_CALL
    assert all(("includefield", "00081030") in a for a in central.asked)


def test_a_readable_study_central_no_longer_holds_is_left_out() -> None:
    central = FakeCentral([study("1.4.1"), study("1.4.3")])
    assert search(central, FakePool(["1.4.1", "1.4.2", "1.4.3"]), []) == ["1.4.1", "1.4.3"]


# -- a filtered search: central's matches, filtered, then paged ------------------------------


def test_a_filtered_search_pages_after_the_filter() -> None:
    held = [study(f"1.5.{n}") for n in range(30)]
    readable = [f"1.5.{n}" for n in range(30) if n % 3 == 0]  # 0, 3, ..., 27
    central, pool = FakeCentral(held), FakePool(readable)
    filtered = [("PatientID", "P1")]
    assert search(central, pool, [*filtered, ("limit", "4")]) == readable[:4]
    assert search(central, pool, [*filtered, ("limit", "4"), ("offset", "8")]) == readable[8:]
    # central's answers other than the reader's never show, not even as a short page's gap
    assert search(central, pool, [*filtered, ("limit", "100")]) == readable


def test_a_filtered_search_scans_central_in_batches_and_stops_when_it_has_the_page() -> None:
    held = [study(f"1.6.{n}") for n in range(100)]
    central, pool = FakeCentral(held), FakePool([f"1.6.{n}" for n in range(100)])
    found = search(central, pool, [("PatientID", "P1"), ("limit", "5")], max_matches=10)
    assert found == [f"1.6.{n}" for n in range(5)]
    assert len(central.asked) == 1 and ("limit", "10") in central.asked[0]
    assert ("offset", "0") in central.asked[0]


def test_a_filtered_search_reads_at_most_max_matches_and_the_page_comes_back_short() -> None:
    held = [study(f"1.7.{n}") for n in range(1100)]
    central, pool = FakeCentral(held), FakePool(["1.7.5", "1.7.1050"])
    found = search(central, pool, [("PatientID", "P1"), ("limit", "10")], max_matches=1000)
    assert found == ["1.7.5"]  # 1.7.1050 lies past the bound: short, and no warning
    batches = [(dict(a)["offset"], dict(a)["limit"]) for a in central.asked]
    assert batches == [("0", str(qido.SCAN_BATCH)), (str(qido.SCAN_BATCH), str(qido.SCAN_BATCH))]


def test_a_filtered_search_stops_when_central_runs_out() -> None:
    central = FakeCentral([study("1.8.1"), study("1.8.2", patient_id="P2")])
    assert search(central, FakePool(["1.8.1", "1.8.2"]), [("PatientID", "P1")]) == ["1.8.1"]
    assert len(central.asked) == 1


def test_an_administrators_search_goes_to_central_as_asked() -> None:
    central = FakeCentral([study(f"1.9.{n}") for n in range(10)])
    pool = FakePool([])
    found = search(central, pool, [("PatientID", "P1"), ("limit", "3")], reader=None)
    assert found == ["1.9.0", "1.9.1", "1.9.2"]
    assert central.asked == [[("PatientID", "P1"), ("limit", "3")]]
    assert pool.queries == []  # no institution filter for a platform administrator


def test_an_administrators_name_search_in_hanzi_is_matched_here_and_paged() -> None:
    ma_hua = {"Alphabetic": "MA^HUA", "Ideographic": "马^华"}
    central = FakeCentral([study(f"2.1.{n}", name=None if n % 2 else ma_hua) for n in range(10)])
    found = search(
        central, FakePool([]), [("PatientName", "马*"), ("limit", "2"), ("offset", "1")], None
    )
    assert found == ["2.1.2", "2.1.4"]
    assert all("PatientName" not in dict(a) for a in central.asked)  # central cannot match 汉字
