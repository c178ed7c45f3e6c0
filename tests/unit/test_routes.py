"""The plugins' route helper: methods, JSON bodies validated by pydantic, answers."""

import json

from imgcloud.edge_requests import FetchRequest
from imgcloud.routes import Method, NotAllowed, Reply, Request, Route, error


def echo(request: Request) -> Reply:
    return Reply(200, {"groups": list(request.groups), "query": dict(request.query)})


def test_a_method_the_route_does_not_take_lists_those_it_does() -> None:
    route = Route(GET=echo, PUT=echo)
    assert route.dispatch("DELETE") == NotAllowed("GET,PUT")


def test_groups_and_query_reach_the_handler() -> None:
    reply = Route(GET=echo).dispatch("GET", ("abc",), {"to": "H0002"})
    assert isinstance(reply, Reply) and reply.status == 200
    assert json.loads(reply.text()) == {"groups": ["abc"], "query": {"to": "H0002"}}


def test_a_body_is_validated_and_each_bad_field_named() -> None:
    seen = []

    def handler(request: Request) -> Reply:
        seen.append(request.body)
        return Reply(200, {})

    route = Route(POST=Method(handler, FetchRequest))
    ok = route.dispatch("POST", body=b'{"study_instance_uid": "1.2.3"}')
    assert isinstance(ok, Reply) and ok.status == 200
    assert seen == [FetchRequest(study_instance_uid="1.2.3")]
    bad = route.dispatch("POST", body=b'{"study_instance_uid": "x", "deliver_to": 5}')
    assert isinstance(bad, Reply) and bad.status == 400
    message = bad.body["error"]
    assert "study_instance_uid:" in message and "deliver_to:" in message
    assert len(seen) == 1  # the handler never saw the refused body


def test_a_body_that_is_not_a_json_object_gets_the_routes_status() -> None:
    route = Route(POST=Method(echo, FetchRequest, invalid_status=422, json_status=415))
    assert route.dispatch("POST", body=b"not json") == error(415, "body must be JSON")
    assert route.dispatch("POST", body=b"[1]") == error(415, "body must be a JSON object")
    refused = route.dispatch("POST", body=b"{}")
    assert isinstance(refused, Reply) and refused.status == 422


def test_a_text_body_goes_out_as_it_is() -> None:
    assert Reply(404, "no such thing").text() == "no such thing"
    assert Reply(200, {"a": 1}).text() == '{"a": 1}'


def test_a_hint_says_what_body_was_expected() -> None:
    route = Route(POST=Method(echo, FetchRequest, hint="body must be {study_instance_uid}"))
    refused = route.dispatch("POST", body=b"{}")
    assert isinstance(refused, Reply)
    assert refused.body["error"].endswith("; body must be {study_instance_uid}")
