"""The plugins' HTTP-call helper, and the clients built on it: no answer and a refusal both
become the component's exception, with the status only when the service answered; an
answer that is not JSON is an error too; the timeout is the one the client states."""

from __future__ import annotations

import httpx
import pytest
from imgcloud.central_api import CentralApi
from imgcloud.errors import CentralError, LocalOrthancError, ServiceCallError
from imgcloud.http_call import Service
from imgcloud.local_api import LocalOrthanc


def answering(status: int, body: bytes = b"{}", seen: list[httpx.Request] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=body)

    return httpx.MockTransport(handler)


def unreachable() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    return httpx.MockTransport(handler)


def service(transport: httpx.BaseTransport, **kw: object) -> Service:
    client = httpx.Client(base_url="http://peer.test", transport=transport)
    return Service(client, "the peer", CentralError, timeout=7.0, **kw)  # type: ignore[arg-type]


def test_no_answer_is_the_components_error_without_a_status() -> None:
    with pytest.raises(CentralError, match=r"the peer did not answer \(ping\): ConnectError") as e:
        service(unreachable()).call("GET", "/ping", "ping")
    assert e.value.status is None
    assert isinstance(e.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("status", [400, 404, 409, 503])
def test_a_refusal_carries_its_status_and_the_start_of_the_body(status: int) -> None:
    with pytest.raises(CentralError, match=rf"refused \(ping\): HTTP {status} nope") as e:
        service(answering(status, b"nope" + b"x" * 500)).call("GET", "/ping", "ping")
    assert e.value.status == status
    assert len(str(e.value)) < 300  # the body is cut


def test_expect_narrows_what_counts_as_success() -> None:
    strict = service(answering(201), expect={200})
    with pytest.raises(CentralError) as e:
        strict.call("POST", "/x", "create")
    assert e.value.status == 201
    assert service(answering(201)).call("POST", "/x", "create").status_code == 201


def test_an_answer_that_is_not_json_is_an_error() -> None:
    with pytest.raises(CentralError, match="not JSON"):
        service(answering(200, b"<html>")).json("GET", "/x", "read")


def test_the_stated_timeout_goes_with_every_request() -> None:
    seen: list[httpx.Request] = []
    service(answering(200, seen=seen)).call("GET", "/x", "read")
    assert seen[0].extensions["timeout"] == httpx.Timeout(7.0).as_dict()


def test_central_api_translates_to_central_error() -> None:
    api = CentralApi("http://central.test", None, transport=unreachable())
    with pytest.raises(CentralError, match="central did not answer"):
        api.store(b"DICM")
    refusing = CentralApi("http://central.test", None, transport=answering(403, b"denied"))
    with pytest.raises(CentralError) as e:
        refusing.get_push("p1")
    assert e.value.status == 403
    malformed = CentralApi("http://central.test", None, transport=answering(200, b"{}"))
    with pytest.raises(CentralError, match="malformed"):
        malformed.verify({"1.2.3": "ab"})


def test_local_orthanc_translates_to_local_orthanc_error() -> None:
    local = LocalOrthanc(answering(404, b"Unknown resource"), "EDGE")
    with pytest.raises(LocalOrthancError, match="no longer on this edge") as e:
        local.list_instances("gone")
    assert e.value.status == 404
    assert issubclass(LocalOrthancError, ServiceCallError)
