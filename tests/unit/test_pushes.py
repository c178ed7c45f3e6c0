"""Cross-hospital pushes (imgcloud.pushes): what a push request must hold, which state may
follow which, and how a state report from an edge is checked before central records it.
The registry's SQL runs against PostgreSQL in tests/integration/test_two_copies_pushes.py;
here a stand-in connection, lent by a stand-in pool, answers it, to reach every refusal
without a stack."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from imgcloud import instance_hashes
from imgcloud.central_schema import REVISION, VERSION_QUERY
from imgcloud.pushes import PushRegistry, PushRejected, check_transition, validate_request
from psycopg.rows import dict_row

GOOD = {
    "study_instance_uid": "1.2.840.113619.2.55.3",
    "from_institution": "H0001",
    "to_institution": "H0002",
}


def rejected(body: Any) -> PushRejected:
    with pytest.raises(PushRejected) as caught:
        validate_request(body)
    return caught.value


# -- the request ------------------------------------------------------------------------


def test_a_valid_request_is_normalised() -> None:
    assert validate_request(GOOD | {"deliver_to": "PACS_B", "requested_by": "rad-a"}) == {
        **GOOD,
        "deliver_to": "PACS_B",
        "requested_by": "rad-a",
    }
    plain = validate_request(GOOD | {"requested_by": ""})
    assert plain["deliver_to"] is None and plain["requested_by"] is None
    assert len(validate_request(GOOD | {"requested_by": "x" * 500})["requested_by"]) == 128


@pytest.mark.parametrize("body", [None, [], "push", 7])
def test_a_body_that_is_not_an_object_is_a_400(body: Any) -> None:
    assert rejected(body).status == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"study_instance_uid": "1.2.abc"}, "study_instance_uid"),
        ({"study_instance_uid": "1." + "2" * 70}, "study_instance_uid"),  # over 64
        ({"study_instance_uid": 12}, "study_instance_uid"),
        ({"from_institution": "h0001"}, "from_institution"),
        ({"from_institution": "H"}, "from_institution"),
        ({"to_institution": "H0002; DROP"}, "to_institution"),
        ({"to_institution": "H0001"}, "to_institution"),  # to itself
        ({"deliver_to": "A" * 17}, "deliver_to"),
        ({"deliver_to": "PACS\\B"}, "deliver_to"),
        ({"deliver_to": 5}, "deliver_to"),
    ],
)
def test_each_bad_field_is_a_422_naming_it(change: dict[str, Any], field: str) -> None:
    refusal = rejected(GOOD | change)
    assert refusal.status == 422 and field in str(refusal)


def test_every_problem_is_named_at_once() -> None:
    refusal = rejected({"study_instance_uid": "x", "to_institution": "?"})
    for field in ("study_instance_uid", "from_institution", "to_institution"):
        assert field in str(refusal)


# -- the states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "proposed"),
    [
        ("pending", "claimed"),
        ("claimed", "delivered"),
        ("claimed", "failed"),
        ("claimed", "claimed"),  # the edge restarted and claims it again
        ("failed", "claimed"),  # B retries
    ],
)
def test_the_allowed_transitions(current: str, proposed: str) -> None:
    assert check_transition(current, proposed) == proposed


@pytest.mark.parametrize(
    ("current", "proposed"),
    [
        ("pending", "delivered"),  # never delivered unclaimed
        ("pending", "failed"),
        ("failed", "delivered"),
        ("delivered", "claimed"),  # delivered is final
        ("delivered", "failed"),
        ("delivered", "delivered"),
    ],
)
def test_a_transition_out_of_order_is_a_409(current: str, proposed: str) -> None:
    with pytest.raises(PushRejected) as caught:
        check_transition(current, proposed)
    assert caught.value.status == 409


@pytest.mark.parametrize("proposed", ["done", None, 3, "DELIVERED"])
def test_an_unknown_state_is_a_422(proposed: Any) -> None:
    with pytest.raises(PushRejected) as caught:
        check_transition("claimed", proposed)
    assert caught.value.status == 422


def test_delivered_is_reached_only_through_claimed() -> None:
    reachable, frontier = {"pending"}, ["pending"]
    while frontier:
        state = frontier.pop()
        for proposed in ("pending", "claimed", "delivered", "failed"):
            try:
                check_transition(state, proposed)
            except PushRejected:
                continue
            if proposed == "delivered":
                assert state == "claimed"
            if proposed not in reachable:
                reachable.add(proposed)
                frontier.append(proposed)
    assert reachable == {"pending", "claimed", "delivered", "failed"}


# -- a state report, through the registry ---------------------------------------------------


class FakeConnection:
    """Answers the registry's statements from one push row; records what it was asked."""

    closed = False

    def __init__(self, row: dict[str, Any] | None, update_hits: bool = True) -> None:
        self.row = row
        self.update_hits = update_hits
        self.updates: list[tuple[Any, ...]] = []

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> FakeConnection:
        self._rows: list[dict[str, Any]] = []
        if sql == VERSION_QUERY:  # at open: migrated
            self._rows = [{"version_num": REVISION}]
        elif sql.lstrip().startswith("SELECT * FROM imgcloud_pushes WHERE push_id"):
            self._rows = [dict(self.row)] if self.row else []
        elif sql.lstrip().startswith("UPDATE imgcloud_pushes") and self.row:
            self.updates.append(params)
            if self.update_hits:
                state, detail, instances = params[0], params[1], params[2]
                self.row |= {"state": state, "detail": detail}
                if instances is not None:
                    self.row["instances"] = instances
                self._rows = [dict(self.row)]
        return self

    def fetchall(self) -> list[dict[str, Any]]:
        return self._rows


def registry_with(
    monkeypatch: pytest.MonkeyPatch, state: str | None, update_hits: bool = True
) -> tuple[PushRegistry, FakeConnection, str]:
    push_id = str(uuid.uuid4())
    row = None
    if state is not None:
        row = {
            "push_id": uuid.UUID(push_id),
            **GOOD,
            "deliver_to": None,
            "requested_by": None,
            "state": state,
            "detail": None,
            "instances": None,
            "created_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            "updated_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            "delivered_at": None,
        }
    conn = FakeConnection(row, update_hits)
    FakePool.conn = conn
    monkeypatch.setattr(instance_hashes, "ConnectionPool", FakePool)
    return PushRegistry({"host": "nowhere"}), conn, push_id


class FakePool:
    """Stands in for psycopg_pool.ConnectionPool: lends the one FakeConnection."""

    conn: FakeConnection
    made: ClassVar[list[dict[str, Any]]] = []

    @staticmethod
    def check_connection(conn: object) -> None:
        pass

    def __init__(self, **options: Any) -> None:
        FakePool.made.append(options)

    def wait(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        yield self.conn


def test_the_registry_uses_a_bounded_pool_of_autocommit_dict_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry_with(monkeypatch, "pending")
    options = FakePool.made[-1]
    assert options["kwargs"] == {"host": "nowhere", "autocommit": True, "row_factory": dict_row}
    assert options["max_size"] == instance_hashes.POOL_MAX_SIZE <= 8
    assert options["timeout"] == instance_hashes.POOL_TIMEOUT_S and options["open"] is True
    assert options["check"] is FakePool.check_connection


def change_refused(registry: PushRegistry, push_id: str, body: Any) -> PushRejected:
    with pytest.raises(PushRejected) as caught:
        registry.change(push_id, body)
    return caught.value


def test_a_report_moves_the_push_on_and_answers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, conn, push_id = registry_with(monkeypatch, "claimed")
    changed = registry.change(
        push_id, {"institution": "H0002", "state": "delivered", "instances": 8, "detail": "ok"}
    )
    assert changed["push_id"] == push_id and changed["state"] == "delivered"
    assert changed["instances"] == 8 and changed["created_at"] == "2026-12-01T00:00:00+00:00"
    (update,) = conn.updates
    assert update[0] == "delivered" and update[-1] == "claimed"  # only if still claimed


def test_only_the_receiving_hospital_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, conn, push_id = registry_with(monkeypatch, "pending")
    refusal = change_refused(registry, push_id, {"institution": "H0001", "state": "claimed"})
    assert refusal.status == 403 and conn.updates == []


def test_an_unknown_push_is_a_404(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _, push_id = registry_with(monkeypatch, None)
    assert change_refused(registry, push_id, {"institution": "H0002"}).status == 404
    assert registry.get("not-a-uuid") is None


@pytest.mark.parametrize(
    ("state", "body", "status"),
    [
        ("pending", ["claimed"], 400),
        ("pending", {"institution": "H0002", "state": "delivered"}, 409),
        ("claimed", {"institution": "H0002", "state": "gone"}, 422),
        ("claimed", {"institution": "H0002", "state": "delivered", "instances": -1}, 422),
        ("claimed", {"institution": "H0002", "state": "delivered", "instances": "8"}, 422),
        ("delivered", {"institution": "H0002", "state": "claimed"}, 409),
    ],
)
def test_a_bad_report_is_refused_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, state: str, body: Any, status: int
) -> None:
    registry, conn, push_id = registry_with(monkeypatch, state)
    assert change_refused(registry, push_id, body).status == status
    assert conn.updates == [] and conn.row is not None and conn.row["state"] == state


def test_a_push_that_changed_meanwhile_is_a_409(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two reports race: the UPDATE is guarded by the state read, and the loser is told."""
    registry, conn, push_id = registry_with(monkeypatch, "pending", update_hits=False)
    refusal = change_refused(registry, push_id, {"institution": "H0002", "state": "claimed"})
    assert refusal.status == 409 and len(conn.updates) == 1


def test_listing_by_an_unknown_state_is_a_422(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _, _ = registry_with(monkeypatch, "pending")
    with pytest.raises(PushRejected) as caught:
        registry.list("H0002", "finished")
    assert caught.value.status == 422
