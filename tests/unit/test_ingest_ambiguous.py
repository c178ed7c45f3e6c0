"""Files that two readers could read as two instances are refused at ingest (#18, 1):
pydicom keeps the last of two equal tags, DCMTK (Orthanc) the first."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pydicom.uid import UID, generate_uid

from deploy.samples.studies import make_study
from indexer.errors import InvalidRecord
from indexer.services import ingest
from indexer.services.ingest import Ambiguous, Identity, split_header
from tests.raw_dicom import insert_before, part10, ui_element, with_study_uid_first


def instance(seed: int = 11) -> Dataset:
    return next(make_study(seed, "CT", instances=1).instances())


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def check(data: bytes, size: int = 4096) -> Identity:
    return asyncio.run(split_header(chunks(data, size)))[0]


def test_a_plain_file_gives_its_three_uids() -> None:
    ds = instance()
    found = check(part10(ds), 7)
    assert (found.study, found.series, found.sop) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert found.patient_id == ds.PatientID


@pytest.mark.parametrize("size", [7, 4096, 10**7])
def test_a_second_study_uid_is_refused_whichever_comes_first(size: int) -> None:
    ds = instance()
    other = generate_uid()
    data = with_study_uid_first(ds, other)
    # pydicom alone would have seen its own UID: the hole
    assert dcmread(io.BytesIO(data)).StudyInstanceUID == ds.StudyInstanceUID
    with pytest.raises(Ambiguous, match=r"\(0020,000D\) out of order or repeated") as info:
        check(data, size)
    assert info.value.study == other  # what Orthanc would have read: for the audit row


@pytest.mark.parametrize(("group", "element"), [(0x0020, 0x000E), (0x0008, 0x0018)])
def test_a_repeated_series_or_sop_uid_is_refused(group: int, element: int) -> None:
    ds = instance()
    own = ui_element(group, element, str(ds[group, element].value))
    data = insert_before(part10(ds), own, ui_element(group, element, generate_uid()))
    with pytest.raises(Ambiguous, match="out of order or repeated"):
        check(data)


def test_an_element_out_of_order_before_the_uids_is_refused() -> None:
    ds = instance()
    own = ui_element(0x0020, 0x000D, str(ds.StudyInstanceUID))
    late = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 4) + b"X^Y "  # PatientName again
    with pytest.raises(Ambiguous, match="out of order"):
        check(insert_before(part10(ds), own, late))


def test_a_repeated_transfer_syntax_in_the_file_meta_is_refused() -> None:
    ds = instance()
    data = part10(ds)
    syntax = ui_element(0x0002, 0x0010, str(ds.file_meta.TransferSyntaxUID))
    twice = insert_before(data, syntax, ui_element(0x0002, 0x0010, "1.2.840.10008.1.2"))
    with pytest.raises(Ambiguous, match="file meta"):
        check(twice)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "1.2." + "3" * 70),  # longer than 64
        ("StudyInstanceUID", "1.2.abc"),
        ("SeriesInstanceUID", "1.02.3"),  # a leading zero
        ("SOPInstanceUID", "1.2.3\\1.2.4"),  # two values
        ("StudyInstanceUID", " 9.8.7.6.5.4.3"),  # a leading space: pydicom takes it, DICOM not
    ],
)
def test_a_uid_that_is_not_valid_is_refused(
    attribute: str, value: str, recwarn: pytest.WarningsRecorder
) -> None:
    ds = instance()
    setattr(ds, attribute, value)
    if attribute == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = UID(value)
    if value.startswith(" "):  # pydicom strips it when writing: put it in the bytes
        ds.StudyInstanceUID = "99.8.7.6.5.4.3"
        data = part10(ds).replace(b"99.8.7.6.5.4.3", value.encode(), 1)
    else:
        data = part10(ds)
    recwarn.clear()
    with pytest.raises(Ambiguous, match=f"{attribute} is not a valid UID"):
        check(data)
    assert not [w for w in recwarn if value.strip() in str(w.message)]  # no value in the log


def test_a_file_meta_sop_uid_that_is_not_the_data_sets_is_refused() -> None:
    ds = instance()
    sop = str(ds.SOPInstanceUID)
    other = sop[:-1] + ("1" if sop[-1] != "1" else "2")  # same length: the group length holds
    data = part10(ds)  # (pydicom writes the data set's SOP UID in the meta: edit the bytes)
    own = ui_element(0x0002, 0x0003, sop)
    with pytest.raises(Ambiguous, match="MediaStorageSOPInstanceUID"):
        check(data.replace(own, ui_element(0x0002, 0x0003, other), 1))


def test_a_file_without_series_uid_is_refused() -> None:
    ds = instance()
    del ds.PixelData
    del ds.SeriesInstanceUID
    with pytest.raises(InvalidRecord, match="SeriesInstanceUID"):
        check(part10(ds))


def test_orthanc_ids_are_sha1_of_the_uids_in_groups_of_eight() -> None:
    found = Identity(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5", patient_id="P1")
    instance_id, study_id = found.orthanc_ids() or ("", "")
    assert study_id.count("-") == 4 and all(len(g) == 8 for g in study_id.split("-"))
    assert instance_id != study_id


# -- what central indexed ------------------------------------------------------------------

CHECKED = Identity(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5", patient_id="P1")


def central(study_uid: str, calls: list[str]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        tags: dict[str, Any] = {
            "/instances/i": {"ParentSeries": "s", "MainDicomTags": {"SOPInstanceUID": "1.2.3.4.5"}},
            "/series/s": {"ParentStudy": "t", "MainDicomTags": {"SeriesInstanceUID": "1.2.3.4"}},
            "/studies/t": {"MainDicomTags": {"StudyInstanceUID": study_uid}},
        }
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        return httpx.Response(200, content=json.dumps(tags[request.url.path]))

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://central")


def test_the_ids_central_answers_are_checked_without_a_call_when_they_match() -> None:
    calls: list[str] = []
    instance_id, study_id = CHECKED.orthanc_ids() or ("", "")
    stored = {"ID": instance_id, "ParentStudy": study_id, "Status": "Success"}
    assert asyncio.run(ingest.indexed_study(central("9.9", calls), CHECKED, stored)) is None
    assert calls == []


@pytest.mark.parametrize(("study_uid", "joined"), [("1.2.3", None), ("9.9", "9.9")])
def test_otherwise_central_is_asked_which_study_it_indexed(
    study_uid: str, joined: str | None
) -> None:
    calls: list[str] = []
    stored = {"ID": "i", "ParentStudy": "t", "Status": "Success"}
    got = asyncio.run(ingest.indexed_study(central(study_uid, calls), CHECKED, stored))
    assert got == joined
    assert calls == ["GET /instances/i", "GET /series/s", "GET /studies/t"]


@pytest.mark.parametrize(("status", "removed"), [("Success", True), ("AlreadyStored", False)])
def test_an_instance_indexed_elsewhere_is_refused_and_taken_back_only_if_new(
    status: str, removed: bool
) -> None:
    from indexer.api.audit_middleware import Decision
    from indexer.api.routes.ingest import _indexed_as_checked

    calls: list[str] = []
    done = Decision("/instances")
    stored = {"ID": "i", "ParentStudy": "t", "Status": status}
    with pytest.raises(Ambiguous, match="other identifying elements"):
        asyncio.run(_indexed_as_checked(central("9.9", calls), done, CHECKED, stored))
    assert ("DELETE /instances/i" in calls) is removed
    assert done.resource == "study:9.9"  # the study it really joined


# -- a failed after-store check leaves nothing unchecked at central --------------------------


def failing_central(calls: list[str], get: str, deletes_failing: int) -> httpx.AsyncClient:
    """Central that fails the after-store check (`get`: "timeout" or "500"), then fails
    the first `deletes_failing` removals (a timeout each)."""

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        assert request.extensions["timeout"]["read"] is not None  # an explicit timeout
        if request.method == "DELETE":
            if calls.count(calls[-1]) <= deletes_failing:
                raise httpx.ReadTimeout("slow", request=request)
            return httpx.Response(200, json={})
        if get == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(500, text="no")

    return httpx.AsyncClient(
        transport=httpx.MockTransport(answer),
        base_url="http://central",
        timeout=None,  # noqa: S113 (the code must set its own)
    )


@pytest.mark.parametrize("get", ["timeout", "500"])
@pytest.mark.parametrize("status", ["Success", "AlreadyStored"])
def test_an_instance_that_could_not_be_checked_is_taken_back_if_new(get: str, status: str) -> None:
    from indexer.api.audit_middleware import Decision
    from indexer.api.routes.ingest import _indexed_as_checked

    calls: list[str] = []
    done = Decision("study:1.2.3")
    stored = {"ID": "i", "ParentStudy": "t", "Status": status}
    with pytest.raises(ingest.CentralRefused, match="could not be checked"):
        asyncio.run(_indexed_as_checked(failing_central(calls, get, 1), done, CHECKED, stored))
    removals = [c for c in calls if c.startswith("DELETE")]
    assert removals == (["DELETE /instances/i"] * 2 if status == "Success" else [])
    assert done.resource == "study:1.2.3"


def test_a_removal_that_keeps_failing_is_bounded_and_audited() -> None:
    from indexer.api.audit_middleware import Decision
    from indexer.api.routes.ingest import _indexed_as_checked

    calls: list[str] = []
    done = Decision("study:1.2.3")
    stored = {"ID": "i", "ParentStudy": "t", "Status": "Success"}
    with pytest.raises(ingest.CentralRefused, match="removal failed"):
        asyncio.run(_indexed_as_checked(failing_central(calls, "500", 99), done, CHECKED, stored))
    assert calls.count("DELETE /instances/i") == ingest.REMOVE_TRIES
    assert done.resource == "study:1.2.3/instances/i"  # what is left at central
