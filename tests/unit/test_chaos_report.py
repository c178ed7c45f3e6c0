"""The chaos run's arithmetic (bench/chaos_report.py): a kill's outage as the workloads saw
it, and the yearly downtime those outages add up to against H1's budget."""

from __future__ import annotations

import pytest

from bench.chaos_load import Outcome
from bench.chaos_report import (
    BUDGET_H,
    KillResult,
    availability,
    budget_lines,
    effect,
    losses_per_kill,
    yearly_downtime_h,
)


def outcomes(*pairs: tuple[float, bool]) -> list[Outcome]:
    return [Outcome(at, ok, 0.1, None if ok else "HTTP 502") for at, ok in pairs]


def test_no_error_after_the_kill_is_no_outage() -> None:
    seen = effect(outcomes((99.0, False), (101.0, True), (102.0, True)), kill_at=100.0)
    assert (seen.errors, seen.outage_s, seen.operations) == (0, 0.0, 2)  # before: not counted


def test_outage_runs_to_the_first_success_after_the_last_failure() -> None:
    seen = effect(
        outcomes((101.0, False), (103.0, True), (104.0, False), (107.5, True), (108.0, True)),
        kill_at=100.0,
    )
    assert seen.errors == 2 and seen.recovered and seen.outage_s == pytest.approx(7.5)
    assert seen.first_error == "HTTP 502" and "7.5 s" in seen.cell()


def test_failures_to_the_end_are_not_recovered() -> None:
    seen = effect(outcomes((101.0, True), (102.0, False), (130.0, False)), kill_at=100.0)
    assert not seen.recovered and seen.outage_s == pytest.approx(30.0)
    assert "NOT RECOVERED" in seen.cell()


def result(component: str, outage: float) -> KillResult:
    seen = effect(outcomes((1.0, False), (1.0 + outage, True)), kill_at=1.0 - 1e-9)
    return KillResult(f"a {component}", component, {"viewer": seen})


def test_downtime_takes_each_components_worst_kill_once_a_month() -> None:
    results = [result("seaweedfs", 10.0), result("seaweedfs", 30.0), result("postgresql", 20.0)]
    assert yearly_downtime_h(results) == pytest.approx(12 * (30 + 20) / 3600, rel=1e-6)
    assert yearly_downtime_h(results, failures_a_year=1) == pytest.approx(50 / 3600, rel=1e-6)


def test_the_budget_line_says_whether_h1_holds() -> None:
    assert "within" in budget_lines([result("central", 60.0)])
    assert "OVER" in budget_lines([result("central", BUDGET_H * 3600 / 12 + 1)])
    assert availability(1.6) == pytest.approx(99.9817, abs=1e-4)


def test_each_kill_counts_the_writes_acknowledged_in_its_window() -> None:
    first = KillResult("a central", "central", {}, start=10.0, end=20.0)
    second = KillResult("an indexer", "indexer", {}, start=20.0, end=30.0)
    acked = {"archive": {"a": 12.0, "b": 15.0, "c": 25.0}, "records": {"r": 29.0}}
    text = losses_per_kill([first, second], acked, {"archive": {"b"}, "records": set()})
    lines = text.splitlines()[1:]
    assert "archive 1/2, records 0/0" in lines[0]  # b lost; c came after this window
    assert "archive 0/1, records 0/1" in lines[1]
