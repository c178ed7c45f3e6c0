"""The edge's in-process calls to its own Orthanc (imgcloud.local_api): requests reach the
SDK call with their path, query and body; an SDK failure becomes the HTTP status Orthanc's
REST API gives that error, so callers tell "gone" (404) from other failures."""

from __future__ import annotations

import json

import pytest
from imgcloud.errors import LocalOrthancError
from imgcloud.local_api import InProcessTransport, LocalOrthanc


class SdkFailure(Exception):
    """Stands in for orthanc.OrthancException: (error code, description)."""


def error_code(exc: Exception) -> int | None:
    return int(exc.args[0]) if isinstance(exc, SdkFailure) else None


def local_with(answers: dict[tuple[str, str], bytes | Exception], seen: list) -> LocalOrthanc:
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
