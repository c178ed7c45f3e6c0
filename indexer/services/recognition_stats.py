"""互认 statistics (#16): recognition rate by institution, modality and month, the exams
not repeated (each recognised prior exam is an exam the patient did not have again), and
the reasons for not recognising; as JSON and as CSV.

They read the rollup (models/recognition.py), never the decisions: one side's rows, at
most months x institutions x modalities x outcomes, whatever the number of decisions.
The answer holds counts and institution names only, no patient data."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from .recognition import REASONS, RECOGNISED

BY = ("exam", "deciding")  # whose institution a line is: the exam's, or the deciding one's

# Every value is a bound parameter. `side`: BY's; `scope`: a hospital admin's institution
# (by "exam": the decisions on its exams; by "deciding": the decisions its clinicians made).
STATS_SQL = """
SELECT g.period, g.code, i.name, g.modality, g.outcome, g.n
FROM (
    SELECT r.period, r.institution_code AS code, r.modality, r.outcome, r.decisions AS n
    FROM recognition_rollup r
    WHERE r.side = %(side)s AND r.decisions > 0
      AND (%(scope)s::text IS NULL OR r.institution_code = %(scope)s::text)
      AND (%(institution)s::text IS NULL OR r.institution_code = %(institution)s::text)
      AND (%(modality)s::text IS NULL OR r.modality = %(modality)s::text)
      AND (%(start)s::date IS NULL OR r.period >= %(start)s::date)
      AND (%(end)s::date IS NULL OR r.period <= %(end)s::date)
) g
LEFT JOIN institutions i ON i.institution_code = g.code
ORDER BY g.period, g.code, g.modality, g.outcome
"""


@dataclass(frozen=True)
class Query:
    """What the statistics are asked for. `scope`: None for every institution (the
    access decision's, never the caller's word)."""

    scope: str | None
    by: str = "exam"
    institution: str | None = None
    modality: str | None = None
    period_from: dt.date | None = None  # first days of months, both included
    period_to: dt.date | None = None

    def params(self) -> dict[str, Any]:
        return {
            "side": self.by,
            "scope": self.scope,
            "institution": self.institution,
            "modality": self.modality,
            "start": self.period_from,
            "end": self.period_to,
        }


def month(text: str | None) -> dt.date | None:
    """ "2026-12" -> 2026-12-01; None or "" -> None; ValueError otherwise."""
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m").date()


def rate(recognised: int, decisions: int) -> float | None:
    """The recognition rate, rounded to 4 places; None when nothing was decided."""
    if decisions <= 0:
        return None
    return round(recognised / decisions, 4)


def _line(period: str, code: str, name: str | None, modality: str) -> dict[str, Any]:
    return {
        "period": period,
        "institution_code": code,
        "institution_name": name,
        "modality": modality,
        "decisions": 0,
        "recognised": 0,
        "not_recognised": 0,
        "rate": None,
        "reasons": dict.fromkeys(REASONS, 0),
    }


def summarise(rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The answer from the query's rows (period, code, name, modality, outcome, count):
    one line per month, institution and modality, and the totals. Pure, for the tests."""
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    total = _line("", "", None, "")
    for period, code, name, modality, outcome, count in rows:
        when = period.strftime("%Y-%m") if isinstance(period, dt.date) else str(period)
        key = (when, str(code), str(modality))
        line = lines.setdefault(key, _line(when, str(code), name, str(modality)))
        n = int(count)
        for into in (line, total):
            into["decisions"] += n
            if outcome == RECOGNISED:
                into["recognised"] += n
            else:
                into["not_recognised"] += n
                into["reasons"][outcome] = into["reasons"].get(outcome, 0) + n
    for into in (*lines.values(), total):
        into["rate"] = rate(into["recognised"], into["decisions"])
    return {
        "rows": list(lines.values()),
        "totals": {
            "decisions": total["decisions"],
            "recognised": total["recognised"],
            "exams_not_repeated": total["recognised"],
            "not_recognised": total["not_recognised"],
            "rate": total["rate"],
            "reasons": total["reasons"],
        },
    }


async def statistics(pool: AsyncConnectionPool, query: Query) -> dict[str, Any]:
    async with pool.connection() as conn:
        cursor = await conn.execute(STATS_SQL, query.params(), prepare=True)
        rows = await cursor.fetchall()
    answer = summarise(rows)
    answer["by"] = query.by
    return answer


# --- CSV -------------------------------------------------------------------------------

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "period",
    "institution_code",
    "institution_name",
    "modality",
    "decisions",
    "recognised",
    "not_recognised",
    "rate",
)


def cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: a value starting with = + - @ (or a tab
    or CR) gets a leading apostrophe, so it never becomes a formula (OWASP's advice)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def to_csv(answer: dict[str, Any]) -> str:
    """The statistics' lines as CSV (UTF-8 with a BOM, so that spreadsheets read 汉字),
    one column per reason code after the counts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*CSV_COLUMNS, *(f"reason:{code}" for code in REASONS)])
    for line in answer["rows"]:
        writer.writerow(
            [cell(line[c]) for c in CSV_COLUMNS]
            + [cell(line["reasons"].get(code, 0)) for code in REASONS]
        )
    return "\ufeff" + out.getvalue()
