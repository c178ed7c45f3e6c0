"""互认 decisions (#16): the documented reason codes, a clinician's choice checked against
them, and recording it with the statistics' rollup in one transaction. Also the
workspace's two lookups that the API has no route for (a patient by MRN at the caller's
own hospital; the exams' type and image count for the timeline).

What is trusted: the deciding institution and the clinician are the access decision's
scope and the token's subject (never a value of the request); the exam's institution and
modality are the index's (looked up by master index ID).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..errors import InvalidRecord
from ..models import recognition as _registers_the_tables  # noqa: F401
from . import lookup_sql

RECOGNISED = "recognised"
# The documented reasons for not recognising a prior exam (docs: the workspace's list):
# code -> (Chinese label, English label). "other" needs a text saying what.
REASONS: dict[str, tuple[str, str]] = {
    "image-quality": ("图像质量不满足诊断要求", "image quality not sufficient"),
    "too-old": ("检查时间过久，不适用于当前临床问题", "too old for the clinical question"),
    "different-body-part": ("检查部位不同", "different body part"),
    "condition-changed": ("病情已变化", "patient's condition has changed"),
    "incomplete-study": ("检查不完整", "incomplete study"),
    "other": ("其他（请说明）", "other (say why)"),
}
OTHER = "other"
# The purposes a clinician picks from (or writes their own): recorded as written here.
PURPOSES: tuple[str, ...] = (
    "诊疗：当前就诊调阅既往检查 treatment: prior imaging for this visit",
    "会诊 consultation",
    "复诊随访 follow-up",
    "术前评估 pre-operative assessment",
)
MAX_TEXT = 200


@dataclass(frozen=True)
class Choice:
    """A checked decision: recognised, or not with one of REASONS (and a text for
    "other")."""

    recognised: bool
    outcome: str  # RECOGNISED or the reason code
    reason_text: str | None


def choice(recognised: bool, reason: str | None, reason_text: str | None) -> Choice:
    """The decision as recorded, or InvalidRecord naming the field that breaks a rule."""
    text = (reason_text or "").strip() or None
    if text is not None and (len(text) > MAX_TEXT or "\x00" in text):
        raise InvalidRecord("reason_text", f"at most {MAX_TEXT} characters, no NUL")
    if recognised:
        if reason:
            raise InvalidRecord("reason", "a recognised exam has no reason for not recognising")
        return Choice(True, RECOGNISED, None)
    if reason not in REASONS:
        raise InvalidRecord("reason", "one of: " + ", ".join(REASONS))
    if reason == OTHER and (text is None or len(text) < 2):
        raise InvalidRecord("reason_text", "reason 'other' needs a text saying why")
    return Choice(False, reason, text)


def purpose_of(picked: str | None, written: str | None) -> str | None:
    """The purpose a page form states: the text written, else the one picked from
    PURPOSES (anything else is no purpose); None without one."""
    text = (written or "").strip()
    if len(text) >= 2:
        return text[:MAX_TEXT]
    return picked if picked in PURPOSES else None


@dataclass(frozen=True)
class ExamFacts:
    exam_id: int
    institution_code: str
    modality: str


EXAM_SQL = "SELECT id, institution_code, modality FROM exams WHERE master_index_id = %s"


async def exam_facts(pool: AsyncConnectionPool, master_index_id: str) -> ExamFacts | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(EXAM_SQL, (master_index_id,), prepare=True)
        row = await cursor.fetchone()
    return ExamFacts(int(row[0]), str(row[1]), str(row[2])) if row else None


# One decision per exam and deciding institution: the exam's decisions are serialised by a
# transaction-level advisory lock, so the rollup moves the replaced one's count exactly once.
LOCK_SQL = "SELECT pg_advisory_xact_lock(%(lock_space)s, (%(exam_id)s %% 2147483647)::int)"
LOCK_SPACE = 16  # the number: advisory locks of other features use other spaces
PREVIOUS_SQL = """
SELECT period, exam_institution, deciding_institution, modality, outcome
FROM recognition_decisions WHERE exam_id = %(exam_id)s AND deciding_institution = %(deciding)s
"""
# A decision counts once on each side: for the exam's institution and for the deciding one.
UNCOUNT_SQL = """
UPDATE recognition_rollup SET decisions = decisions - 1
WHERE period = %(period)s AND modality = %(modality)s AND outcome = %(outcome)s
  AND ((side = 'exam' AND institution_code = %(exam_institution)s)
       OR (side = 'deciding' AND institution_code = %(deciding_institution)s))
"""
PERIOD = "date_trunc('month', now() AT TIME ZONE 'Asia/Shanghai')::date"
UPSERT_SQL = f"""
INSERT INTO recognition_decisions (exam_id, exam_institution, modality, deciding_institution,
    decided_by, recognised, outcome, reason_text, purpose, period)
VALUES (%(exam_id)s, %(exam_institution)s, %(modality)s, %(deciding)s, %(subject)s,
    %(recognised)s, %(outcome)s, %(reason_text)s, %(purpose)s, {PERIOD})
ON CONFLICT (exam_id, deciding_institution) DO UPDATE SET
    decided_by = EXCLUDED.decided_by, recognised = EXCLUDED.recognised,
    outcome = EXCLUDED.outcome, reason_text = EXCLUDED.reason_text,
    purpose = EXCLUDED.purpose, period = EXCLUDED.period, decided_at = now(),
    exam_institution = EXCLUDED.exam_institution, modality = EXCLUDED.modality
RETURNING id, period, decided_at
"""  # noqa: S608 - PERIOD is a constant expression; every value is a bound parameter
COUNT_SQL = """
INSERT INTO recognition_rollup AS r
    (period, side, institution_code, modality, outcome, decisions)
VALUES (%(period)s, 'exam', %(exam_institution)s, %(modality)s, %(outcome)s, 1),
       (%(period)s, 'deciding', %(deciding)s, %(modality)s, %(outcome)s, 1)
ON CONFLICT (period, side, institution_code, modality, outcome)
DO UPDATE SET decisions = r.decisions + 1
"""


async def record(
    pool: AsyncConnectionPool,
    exam: ExamFacts,
    deciding: str,
    subject: str,
    decided: Choice,
    purpose: str,
) -> dict[str, Any]:
    """Record (or replace) `deciding` institution's decision on the exam; the rollup moves
    with it in the same transaction. `deciding` and `subject` are the access decision's
    scope and the token's subject."""
    params = {
        "lock_space": LOCK_SPACE,
        "exam_id": exam.exam_id,
        "exam_institution": exam.institution_code,
        "modality": exam.modality,
        "deciding": deciding,
        "subject": subject,
        "recognised": decided.recognised,
        "outcome": decided.outcome,
        "reason_text": decided.reason_text,
        "purpose": purpose[:MAX_TEXT],
    }
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(LOCK_SQL, params)
        cursor = await conn.cursor(row_factory=dict_row).execute(PREVIOUS_SQL, params)
        previous = await cursor.fetchone()
        if previous is not None:
            await conn.execute(UNCOUNT_SQL, previous)
        cursor = await conn.cursor(row_factory=dict_row).execute(UPSERT_SQL, params)
        row = await cursor.fetchone()
        assert row is not None  # an upsert returns its row
        await conn.execute(COUNT_SQL, {**params, "period": row["period"]})
    return {
        "id": row["id"],
        "deciding_institution": deciding,
        "recognised": decided.recognised,
        "outcome": decided.outcome,
        "reason_text": decided.reason_text,
        "replaced": previous is not None,
        "decided_at": row["decided_at"].isoformat(),
    }


# --- the workspace's lookups ---------------------------------------------------------

# A patient by MRN at the caller's own institution: that patient's exams, and those of the
# person they are (national ID) at every institution; the API's columns and filters.
BY_MRN_SQL = (
    """
WITH matched AS (
    SELECT p.id, p.person_id FROM patients p
    WHERE p.institution_code = %(institution)s AND p.mrn = %(mrn)s
)"""  # noqa: S608 - constant fragments of lookup_sql; every value is a bound parameter
    + lookup_sql.PERSON_COLUMNS
    + """FROM exams e
JOIN institutions i ON i.institution_code = e.institution_code
WHERE (e.patient_id IN (SELECT id FROM matched)
       OR e.person_id IN (SELECT person_id FROM matched WHERE person_id IS NOT NULL))"""
    + lookup_sql.SEARCH_FILTERS
)


async def exams_by_mrn(
    pool: AsyncConnectionPool,
    gateway_url: str,
    institution: str,
    mrn: str,
    filters: dict[str, Any],
) -> list[dict[str, Any]]:
    """The exams of the patient with this MRN at `institution` (the access decision's
    scope) and of the person they are, newest first, as the API answers them."""
    params = {"institution": institution, "mrn": mrn, **filters}
    async with pool.connection() as conn:
        cursor = await conn.cursor(row_factory=dict_row).execute(BY_MRN_SQL, params, prepare=True)
        rows = await cursor.fetchall()
    exams = []
    for row in rows:
        item = dict(row)
        item["exam_datetime"] = lookup_sql._iso(row["exam_datetime"])
        item["links"] = lookup_sql._links(gateway_url, row["study_instance_uid"])
        exams.append(item)
    return exams


def window(date_from: dt.date | None, date_to: dt.date | None) -> dict[str, Any]:
    """A date window as the lookup's SQL takes it (the end a day later, exclusive)."""
    start = dt.datetime.combine(date_from, dt.time(), dt.UTC) if date_from else None
    end = (
        dt.datetime.combine(date_to + dt.timedelta(days=1), dt.time(), dt.UTC) if date_to else None
    )
    return {"start": start, "end": end}


DETAILS_SQL = """
SELECT e.institution_code, e.exam_no, e.exam_type, e.instance_count
FROM exams e JOIN unnest(%(codes)s::text[], %(numbers)s::text[]) AS k(code, no)
  ON e.institution_code = k.code AND e.exam_no = k.no
"""


async def add_details(pool: AsyncConnectionPool, exams: list[dict[str, Any]]) -> None:
    """The timeline's exam type and image count, which the API's person lookup does not
    answer: added to each exam in place."""
    if not exams:
        return
    keys = [(str(e["institution_code"]), str(e["exam_no"])) for e in exams]
    async with pool.connection() as conn:
        cursor = await conn.execute(
            DETAILS_SQL, {"codes": [k[0] for k in keys], "numbers": [k[1] for k in keys]}
        )
        found = {(str(r[0]), str(r[1])): (r[2], r[3]) for r in await cursor.fetchall()}
    for exam, key in zip(exams, keys, strict=True):
        exam["exam_type"], exam["instance_count"] = found.get(key, (None, None))


async def institution_names(pool: AsyncConnectionPool, codes: list[str]) -> dict[str, str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT institution_code, name FROM institutions WHERE institution_code = ANY(%s)",
            (codes,),
        )
        return {str(r[0]): str(r[1]) for r in await cursor.fetchall()}
