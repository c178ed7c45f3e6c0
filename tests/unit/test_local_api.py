"""The edge's in-process calls to its own Orthanc (imgcloud.local_api): requests reach the
SDK call with their path, query and body; an SDK failure becomes the HTTP status Orthanc's
REST API gives that error, so callers tell "gone" (404) from other failures."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from imgcloud.errors import LocalOrthancError
from imgcloud.local_api import HTTP_STATUS_OF_ERROR, InProcessTransport, LocalOrthanc


class SdkFailure(Exception):
    """Stands in for orthanc.OrthancException: (error code, description)."""


def error_code(exc: Exception) -> int | None:
    return int(exc.args[0]) if isinstance(exc, SdkFailure) else None


def local_with(answers: Mapping[tuple[str, str], bytes | Exception], seen: list) -> LocalOrthanc:
    def call(method: str, path: str, body: bytes) -> bytes:
        seen.append((method, path, body))
        answer = answers[(method, path)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return LocalOrthanc(InProcessTransport(call, error_code), "EDGE_H0001")


def test_calls_carry_their_path_query_and_body() -> None:
    seen: list = []
    answers = {
        ("POST", "/modalities/PACS/query"): json.dumps({"ID": "q1"}).encode(),
        ("GET", "/queries/q1/answers"): b"[0]",
        ("GET", "/queries/q1/answers/0/content?simplify"): b'{"StudyInstanceUID": "1.2"}',
    }
    local = local_with(answers, seen)
    query_id, found = local.query("PACS", {"StudyInstanceUID": "1.2"})
    assert (query_id, found) == ("q1", [{"StudyInstanceUID": "1.2"}])
    method, path, body = seen[0]
    assert (method, path) == ("POST", "/modalities/PACS/query")
    assert json.loads(body) == {"Level": "Study", "Query": {"StudyInstanceUID": "1.2"}}
    assert seen[2][1] == "/queries/q1/answers/0/content?simplify"


def test_an_unknown_resource_is_a_404_and_a_vanished_study_says_so() -> None:
    answers = {("GET", "/studies/s1/instances"): SdkFailure(17, "Unknown resource")}
    with pytest.raises(LocalOrthancError) as caught:
        local_with(answers, []).list_instances("s1")
    assert caught.value.status == 404
    assert "no longer on this edge" in str(caught.value)


@pytest.mark.parametrize(("code", "status"), [(15, 400), (9, 500), (36, 503)])
def test_other_failures_keep_orthancs_status(code: int, status: int) -> None:
    answers = {("POST", "/instances"): SdkFailure(code, "failed")}
    with pytest.raises(LocalOrthancError) as caught:
        local_with(answers, []).store(b"DICM")
    assert caught.value.status == status
    assert f"Orthanc error {code}" in str(caught.value)


def test_a_failure_that_is_not_the_sdks_is_not_hidden() -> None:
    answers = {("GET", "/instances/i1/file"): KeyError("bug")}
    with pytest.raises(KeyError):
        local_with(answers, []).read_instance("i1")


def test_every_orthanc_error_code_keeps_the_status_orthancs_rest_api_gives_it() -> None:
    for code, status in HTTP_STATUS_OF_ERROR.items():
        answers = {("GET", "/studies/s1"): SdkFailure(code, "failed")}
        with pytest.raises(LocalOrthancError) as caught:
            local_with(answers, []).study_tags("s1")
        assert caught.value.status == status, code


def test_lookups_keep_the_level_asked_for() -> None:
    seen: list = []
    found = json.dumps(
        [
            {"Type": "Patient", "ID": "p1"},
            {"Type": "Study", "ID": "s1"},
            {"Type": "Series", "ID": "r1"},
        ]
    ).encode()
    local = local_with({("POST", "/tools/lookup"): found}, seen)
    assert local.find_study("1.2.3") == "s1"
    assert local.find_resource("1.2.3.4") == "r1"
    assert [(m, p, b) for m, p, b in seen] == [
        ("POST", "/tools/lookup", b"1.2.3"),
        ("POST", "/tools/lookup", b"1.2.3.4"),
    ]
    assert local.find_resource("") is None and len(seen) == 2  # no call for no UID
    nothing = local_with({("POST", "/tools/lookup"): b"[]"}, [])
    assert nothing.find_study("9.9") is None and nothing.sop_uids("9.9") == set()


def test_a_studys_instances_tags_and_series() -> None:
    instances = [
        {"ID": "i1", "MainDicomTags": {"SOPInstanceUID": "1.1"}},
        {"ID": "i2", "MainDicomTags": {"SOPInstanceUID": "1.2"}},
    ]
    answers = {
        ("POST", "/tools/lookup"): json.dumps([{"Type": "Study", "ID": "s1"}]).encode(),
        ("GET", "/studies/s1/instances"): json.dumps(instances).encode(),
        ("GET", "/studies/s1"): json.dumps({"ID": "s1", "IsStable": True}).encode(),
        ("GET", "/studies/s1/series"): json.dumps([{"ID": "r1"}]).encode(),
        ("GET", "/instances/i2/file"): b"\x00DICM\xff",
    }
    local = local_with(answers, [])
    assert local.list_instances("s1") == [("i1", "1.1"), ("i2", "1.2")]
    assert local.sop_uids("1.2.3") == {"1.1", "1.2"}
    assert local.is_stable("s1") is True and local.study_tags("s1")["ID"] == "s1"
    assert local.study_series("s1") == [{"ID": "r1"}]
    assert local.read_instance("i2") == b"\x00DICM\xff"
    unstable = local_with({("GET", "/studies/s2"): b'{"ID": "s2"}'}, [])
    assert unstable.is_stable("s2") is False  # not said: not stable


def test_store_c_store_and_c_move_send_what_orthanc_expects() -> None:
    seen: list = []
    answers = {
        ("POST", "/instances"): b'{"ID": "i1"}',
        ("GET", "/modalities"): b'["HOSP_PACS", "OTHER"]',
        ("POST", "/modalities/HOSP_PACS/store"): b"{}",
        ("POST", "/queries/q1/answers/2/retrieve"): b"{}",
    }
    local = local_with(answers, seen)
    local.store(b"DICM-bytes")
    assert local.modalities() == {"HOSP_PACS", "OTHER"}
    local.c_store("HOSP_PACS", "s1")
    local.retrieve("q1", 2)
    assert seen[0][2] == b"DICM-bytes"
    assert json.loads(seen[2][2]) == {"Resources": ["s1"], "Synchronous": True}
    assert json.loads(seen[3][2]) == {"TargetAet": "EDGE_H0001", "Synchronous": True}


def test_a_c_find_with_no_answers_reads_none() -> None:
    seen: list = []
    answers = {
        ("POST", "/modalities/PACS/query"): b'{"ID": "q2"}',
        ("GET", "/queries/q2/answers"): b"[]",
    }
    assert local_with(answers, seen).query("PACS", {"PatientID": "P1"}) == ("q2", [])
    assert len(seen) == 2
