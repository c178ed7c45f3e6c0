"""The edge's calls to central (imgcloud.central_api), through its public methods against an
httpx.MockTransport standing in for central: each call's method, path and body, what comes
back, and every failure as CentralError with the status when central answered."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from imgcloud.central_api import CentralApi
from imgcloud.delivery import Verification
from imgcloud.errors import CentralError

BASE = "https://gateway.test/orthanc/"
Handler = Callable[[httpx.Request], httpx.Response]


def central(handler: Handler, seen: list[httpx.Request] | None = None) -> CentralApi:
    def record(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return handler(request)

    return CentralApi(
        BASE, ("edge-h0001", "pw"), timeout_s=7.0, transport=httpx.MockTransport(record)
    )


def answering(status: int, body: object = None, text: str | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return handler


def test_store_posts_the_file_to_centrals_instances_with_a_timeout() -> None:
    seen: list[httpx.Request] = []
    central(answering(200, {"ID": "i1", "Status": "Success"}), seen).store(b"DICM-bytes")
    (request,) = seen
    assert (request.method, request.url.path) == ("POST", "/orthanc/instances")
    assert request.headers["Content-Type"] == "application/dicom"
    assert request.content == b"DICM-bytes"
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.extensions["timeout"]["read"] == 7.0  # every call has one


def test_verify_sends_the_hashes_and_sorts_the_answer() -> None:
    seen: list[httpx.Request] = []
    answer = {"confirmed": ["1.1", "1.2"], "missing": ["1.3"], "mismatched": []}
    verification = central(answering(200, answer), seen).verify({"1.1": "a" * 64})
    assert verification == Verification({"1.1", "1.2"}, {"1.3"}, set())
    assert seen[0].url.path == "/orthanc/imaging-cloud/verify"
    assert json.loads(seen[0].content) == {"instances": {"1.1": "a" * 64}}


@pytest.mark.parametrize("answer", [{"confirmed": []}, ["confirmed"], {"confirmed": 1}])
def test_a_malformed_verification_is_a_central_error(answer: object) -> None:
    with pytest.raises(CentralError):
        central(answering(200, answer)).verify({"1.1": "a" * 64})


def test_find_study_keeps_the_study_among_the_lookups_answers() -> None:
    seen: list[httpx.Request] = []
    found = [{"Type": "Instance", "ID": "i1"}, {"Type": "Study", "ID": "s1"}]
    assert central(answering(200, found), seen).find_study("1.2.3") == "s1"
    assert (seen[0].method, seen[0].url.path, seen[0].content) == (
        "POST",
        "/orthanc/tools/lookup",
        b"1.2.3",
    )
    assert central(answering(200, [{"Type": "Series", "ID": "x"}])).find_study("1.2") is None
    assert central(answering(200, [])).find_study("1.2") is None


def test_list_and_read_instances() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/orthanc/studies/s1/instances":
            return httpx.Response(
                200,
                json=[
                    {"ID": "i1", "MainDicomTags": {"SOPInstanceUID": "1.1"}},
                    {"ID": "i2", "MainDicomTags": {"SOPInstanceUID": "1.2"}},
                ],
            )
        if request.url.path == "/orthanc/instances/i2/file":
            return httpx.Response(200, content=b"\x00DICM\xff")
        return httpx.Response(404, text="Unknown resource")

    api = central(handler)
    assert api.list_instances("s1") == [("i1", "1.1"), ("i2", "1.2")]
    assert api.read_instance("i2") == b"\x00DICM\xff"  # bytes as they came, not decoded


def test_a_refusal_carries_centrals_status_and_the_start_of_its_answer() -> None:
    with pytest.raises(CentralError) as caught:
        central(answering(403, text="forbidden: not your hospital's study")).read_instance("i1")
    assert caught.value.status == 403
    assert "refused" in str(caught.value) and "not your hospital" in str(caught.value)
    with pytest.raises(CentralError) as long_answer:
        central(answering(500, text="x" * 5000)).store(b"DICM")
    assert long_answer.value.status == 500 and len(str(long_answer.value)) < 400


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")],
)
def test_no_answer_is_a_central_error_without_a_status(failure: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(CentralError) as caught:
        central(handler).store(b"DICM")
    assert caught.value.status is None and "did not answer" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


def test_an_answer_that_is_not_json_is_a_central_error() -> None:
    with pytest.raises(CentralError, match="not JSON"):
        central(answering(200, text="<html>gateway</html>")).find_study("1.2.3")


def test_the_push_calls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/orthanc/imaging-cloud/pushes" and request.method == "GET":
            return httpx.Response(200, json={"pushes": [{"push_id": "p1", "state": "pending"}]})
        return httpx.Response(200, json={"push_id": "p1", "state": "claimed"})

    api = central(handler, seen)
    assert api.pending_pushes("H0002") == [{"push_id": "p1", "state": "pending"}]
    assert dict(seen[0].url.params) == {"to": "H0002", "state": "pending"}
    request = {"study_instance_uid": "1.2", "from_institution": "H0001", "to_institution": "H2"}
    assert api.create_push(request)["push_id"] == "p1"
    assert (seen[1].method, seen[1].url.path) == ("POST", "/orthanc/imaging-cloud/pushes")
    assert json.loads(seen[1].content) == request
    assert api.get_push("p1")["state"] == "claimed"
    assert (seen[2].method, seen[2].url.path) == ("GET", "/orthanc/imaging-cloud/pushes/p1")
    api.set_push_state("p1", {"institution": "H0002", "state": "claimed"})
    assert (seen[3].method, seen[3].url.path) == ("POST", "/orthanc/imaging-cloud/pushes/p1/state")
    assert json.loads(seen[3].content) == {"institution": "H0002", "state": "claimed"}
    api.close()


def test_a_push_refused_by_central_keeps_its_status() -> None:
    with pytest.raises(CentralError) as caught:
        central(answering(409, {"error": "open push"})).create_push({"study_instance_uid": "1"})
    assert caught.value.status == 409


def test_a_token_auth_is_sent_on_every_call() -> None:
    class Bearer(httpx.Auth):
        def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
            request.headers["Authorization"] = "Bearer gateway-token"
            yield request

    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    api = CentralApi(BASE, Bearer(), transport=httpx.MockTransport(record))
    api.find_study("1.2")
    api.list_instances("s1")
    assert [r.headers["Authorization"] for r in seen] == ["Bearer gateway-token"] * 2
