"""The fleet's pure logic: template merge, version numbering, validation with the edge's
schema, the staleness decision, the heartbeat's tolerance of an older edge, and who an
edge is."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from indexer.errors import Forbidden
from indexer.security.auth import Principal
from indexer.services import fleet_registry, fleet_rules, fleet_stale, fleet_upgrades

NOW = dt.datetime(2026, 12, 8, 3, 0, tzinfo=dt.UTC)


def test_deep_merge_lays_overrides_over_the_template() -> None:
    template: dict[str, object] = {
        "compression": "jpeg-ls-lossless",
        "forward_windows": [{"start": "20:00", "end": "06:00"}],
        "bandwidth_limit_mbps": 50,
        "nested": {"a": 1, "b": {"c": 2, "d": 3}},
    }
    overrides: dict[str, object] = {
        "forward_windows": [],
        "bandwidth_limit_mbps": None,
        "nested": {"b": {"d": 4}, "e": 5},
        "deliver_pushes_to": "HOSP_PACS",
    }
    merged = fleet_rules.deep_merge(template, overrides)
    assert merged == {
        "compression": "jpeg-ls-lossless",
        "forward_windows": [],  # a list replaces, never appends
        "nested": {"a": 1, "b": {"c": 2, "d": 4}, "e": 5},
        "deliver_pushes_to": "HOSP_PACS",
    }  # null removed bandwidth_limit_mbps (the edge's default applies)
    assert template["nested"] == {"a": 1, "b": {"c": 2, "d": 3}}  # untouched
    assert "bandwidth_limit_mbps" in template


@pytest.mark.parametrize(
    ("central", "edge", "expected"),
    [(None, None, 1), (3, None, 4), (3, 7, 8), (9, 7, 10), (None, 5, 6), (0, 0, 1)],
)
def test_next_version_is_above_central_and_the_edge(
    central: int | None, edge: int | None, expected: int
) -> None:
    assert fleet_rules.next_version(central, edge) == expected


def test_documents_are_checked_with_the_edges_schema() -> None:
    good = {
        "version": 1,
        "compression": "keep",
        "forward_windows": [{"start": "20:00", "end": "06:00"}],
    }
    assert fleet_rules.problems_of(good) == []
    bad = {"version": 1, "compression": "gzip", "push_poll_seconds": 1, "colour": "red"}
    problems = fleet_rules.problems_of(bad)
    places = {".".join(p["loc"]) for p in problems}
    assert places == {"document.compression", "document.push_poll_seconds", "document.colour"}
    assert fleet_rules.problems_of([1, 2]) == [
        {"loc": ["document"], "msg": "must be a JSON object", "type": "type_error"}
    ]
    duplicate_pulls = {
        "version": 1,
        "pacs_pulls": [
            {"name": "p", "source_aet": "PACS", "every_minutes": 5},
            {"name": "p", "source_aet": "PACS", "every_minutes": 9},
        ],
    }
    assert len(fleet_rules.problems_of(duplicate_pulls)) == 1  # the model's own check too


def test_central_sets_the_version_whatever_the_author_wrote() -> None:
    assert fleet_rules.versioned({"version": 99, "compression": "keep"}, 4) == {
        "version": 4,
        "compression": "keep",
    }


@pytest.mark.parametrize(
    ("flagged", "age_s", "expected"),
    [
        (False, 10, None),
        (False, 89, None),  # two missed, the third not yet
        (False, 91, "raise"),
        (True, 91, None),  # raised once
        (True, 5, "clear"),
        (True, 89, "clear"),
    ],
)
def test_staleness_after_three_missed_heartbeats(
    flagged: bool, age_s: float, expected: str | None
) -> None:
    last = NOW - dt.timedelta(seconds=age_s)
    assert fleet_stale.change(flagged, last, NOW, interval_s=30.0, missed=3) == expected


def test_staleness_follows_each_gateways_interval() -> None:
    last = NOW - dt.timedelta(seconds=4)
    assert fleet_stale.is_stale(last, NOW, interval_s=1.0, missed=3)
    assert not fleet_stale.is_stale(last, NOW, interval_s=30.0, missed=3)


FULL = {
    "software_version": "2026.12.0",
    "orthanc_version": "1.12.10",
    "plugins": {"python": "7.0", "imaging-cloud": "2026.12.0"},
    "uptime_s": 123.0,
    "queue_depth": 4,
    "oldest_undelivered_age_s": 35.0,
    "failing_deliveries": 1,
    "failure_reasons": {"central-unreachable": 1},
    "last_delivery_at": "2026-12-08T02:00:00Z",
    "disk_free_bytes": 123456789,
    "cert_expiry": {"dicom_tls": "2027-12-01T00:00:00Z"},
    "error_counts": {"forward": 2},
    "rules_version": 3,
    "release": "2026.12.0",
}


def test_the_contracts_heartbeat_is_taken() -> None:
    beat = fleet_registry.Heartbeat.model_validate(FULL)
    assert beat.queue_depth == 4 and beat.cert_expiry["dicom_tls"].year == 2027


def test_what_orthanc_says_of_its_plugins_is_taken_as_it_is() -> None:
    beat = fleet_registry.Heartbeat.model_validate(
        FULL | {"orthanc_version": "mainline", "plugins": {"gdcm": "", "dicom-web": "1.18"}}
    )
    assert beat.plugins == {"gdcm": "", "dicom-web": "1.18"}


def test_an_edge_one_release_behind_is_served() -> None:
    older = {k: v for k, v in FULL.items() if k in ("software_version", "queue_depth", "uptime_s")}
    beat = fleet_registry.Heartbeat.model_validate(older)
    assert beat.rules_version is None and beat.release is None and beat.error_counts == {}


@pytest.mark.parametrize(
    "change",
    [
        {"patient_name": "Zhang San"},  # unknown fields are refused
        {"queue_depth": -1},
        {"failure_reasons": {"bad key with spaces": 1}},
        {"software_version": ""},
        {"plugins": {"python": "7.0\n<script>"}},
        {"last_delivery_at": "2026-12-08T02:00:00"},  # a time without its zone
    ],
)
def test_a_bad_heartbeat_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        fleet_registry.Heartbeat.model_validate(FULL | change)


def principal(
    roles: set[str], institution: str | None = "H0001", client: str = "gateway-h0001"
) -> Principal:
    return Principal("sub", "user", institution, frozenset(roles), client)


def test_an_edge_is_its_tokens_client_and_institution() -> None:
    edge = fleet_registry.edge_of(principal({"gateway"}))
    assert edge == fleet_registry.Edge("gateway-h0001", "H0001")


@pytest.mark.parametrize(
    "who",
    [
        principal({"hospital-admin"}),  # not a gateway account
        principal({"gateway"}, institution=None),
        principal({"gateway"}, client=""),  # no azp
        principal({"gateway"}, client="Gateway H0001/../x"),
        principal({"platform-admin"}),
    ],
)
def test_anyone_else_is_not_an_edge(who: Principal) -> None:
    with pytest.raises(Forbidden):
        fleet_registry.edge_of(who)


def test_operators_see_every_gateway_or_their_institutions() -> None:
    everything = fleet_registry.operator_scope(principal({"platform-admin"}, None, "cli"))
    assert fleet_registry.access.unconfined(everything)
    own = fleet_registry.operator_scope(principal({"hospital-admin"}, "H0002", "cli"))
    assert fleet_registry.access.confined_to(own) == "H0002"
    query = str(fleet_registry.visible(fleet_registry.select(fleet_registry.FleetGateway), own))
    assert "fleet_gateways.institution = " in query
    with pytest.raises(Forbidden):
        fleet_registry.operator_scope(principal({"radiologist"}))
    with pytest.raises(Forbidden):
        fleet_registry.operator_scope(principal({"gateway"}))


@pytest.mark.parametrize(
    "target",
    [
        {},
        {"gateways": [], "all": True},
        {"group": "canary", "all": True},
        {"gateways": ["../x"]},
        {"all": False},
    ],
)
def test_an_upgrade_names_one_kind_of_target(target: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        fleet_upgrades.Target.model_validate(target)
    assert fleet_upgrades.Target.model_validate({"group": "canary"}).group == "canary"
