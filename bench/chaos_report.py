"""What the chaos run (bench/chaos.py) prints: per kill, what each workload saw, and the
yearly downtime those recoveries add up to against availability requirement H1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .chaos_load import Outcome

# H1: at least 99.982 % available, no more than 1.6 h down a year.
BUDGET_H = 1.6
HOURS_A_YEAR = 365 * 24


@dataclass(frozen=True)
class Effect:
    """What one workload saw from `kill_at` to the end of that kill's window."""

    operations: int
    errors: int
    outage_s: float  # from the kill to the first success after its last failure (0: none)
    recovered: bool  # a success came after the last failure (a retry went through)
    first_error: str | None

    def cell(self) -> str:
        if not self.errors:
            return f"0/{self.operations} err"
        state = f"{self.outage_s:.1f} s" if self.recovered else "NOT RECOVERED"
        return f"{self.errors}/{self.operations} err, {state}"


def effect(outcomes: Iterable[Outcome], kill_at: float) -> Effect:
    seen = sorted((o for o in outcomes if o.at >= kill_at), key=lambda o: o.at)
    failures = [o for o in seen if not o.ok]
    if not failures:
        return Effect(len(seen), 0, 0.0, True, None)
    last = failures[-1].at
    after = [o for o in seen if o.ok and o.at > last]
    outage = (after[0].at if after else last) - kill_at
    return Effect(len(seen), len(failures), outage, bool(after), failures[0].error)


@dataclass(frozen=True)
class KillResult:
    target: str  # what was killed ("PostgreSQL primary (pg-node-1)")
    component: str  # for the downtime sum ("postgresql")
    effects: Mapping[str, Effect]  # workload name -> what it saw
    start: float = 0.0  # the kill (time.monotonic())
    end: float = 0.0  # the end of its window (recovered and settled)

    @property
    def outage_s(self) -> float:
        """The longest any workload could not do its work."""
        return max((e.outage_s for e in self.effects.values()), default=0.0)


def yearly_downtime_h(results: Iterable[KillResult], failures_a_year: float = 12.0) -> float:
    """Hours down a year if each component killed here failed `failures_a_year` times,
    each time for as long as it did here (the longest of its kills)."""
    worst: dict[str, float] = {}
    for result in results:
        worst[result.component] = max(worst.get(result.component, 0.0), result.outage_s)
    return failures_a_year * sum(worst.values()) / 3600


def availability(downtime_h: float) -> float:
    return 100.0 * (1 - downtime_h / HOURS_A_YEAR)


def table(results: list[KillResult], workloads: list[str]) -> str:
    head = ["killed".ljust(34), *(w.ljust(24) for w in workloads), "outage"]
    lines = [" ".join(head)]
    for result in results:
        cells = [result.target[:34].ljust(34)]
        cells += [result.effects[w].cell()[:24].ljust(24) for w in workloads]
        cells.append(f"{result.outage_s:.1f} s")
        lines.append(" ".join(cells))
        for name in workloads:
            first = result.effects[name].first_error
            if first:
                lines.append(f"    {name}: first error: {first}")
    return "\n".join(lines)


def budget_lines(results: list[KillResult], failures_a_year: float = 12.0) -> str:
    down = yearly_downtime_h(results, failures_a_year)
    verdict = "within" if down <= BUDGET_H else "OVER"
    return (
        f"yearly downtime if each component fails {failures_a_year:g} times a year: "
        f"{down * 60:.1f} min ({down:.3f} h, availability {availability(down):.4f} %), "
        f"{verdict} the {BUDGET_H} h budget of H1"
    )


def losses_per_kill(
    results: list[KillResult],
    acked: Mapping[str, Mapping[str, float]],
    bad: Mapping[str, set[str]],
) -> str:
    """Per kill, the writes acknowledged in its window that are lost, duplicated or
    missing at the end (`acked`: workload -> id -> when; `bad`: workload -> ids)."""
    lines = ["acknowledged in each kill's window, then lost/duplicated/missing:"]
    for result in results:
        cells = []
        for name in sorted(acked):
            window = [i for i, at in acked[name].items() if result.start <= at < result.end]
            wrong = sum(1 for i in window if i in bad.get(name, set()))
            cells.append(f"{name} {wrong}/{len(window)}")
        lines.append(f"  {result.target[:34]:<34} " + ", ".join(cells))
    return "\n".join(lines)
