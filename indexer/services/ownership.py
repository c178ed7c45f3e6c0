"""Who owns a study: the institution whose edge's arrival record named it first
(`image_studies`). An exam record only links to a study; it never makes one its
institution's. A grant counts only while its owner is that institution (the SQL in
lookup_sql.GRANT_SQL and qido.RECENT_SQL/AMONG_SQL says the same).

It also loads the facts services/access.py decides on (`study_facts`, `arrival_facts`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidRecord
from ..models import Exam, ImageStudy
from ..security.auth import Principal
from . import lookup_sql
from .access import StudyFacts

log = logging.getLogger(__name__)

FOREIGN_STUDY = "names a study whose images arrived from another institution"


class ForeignStudy(Conflict):
    """An exam names a study another institution owns by arrival (409, naming the field)."""

    def __init__(self, field: str = "study_instance_uid") -> None:
        super().__init__(f"{field}: {FOREIGN_STUDY}")
        self.field = field


def foreign_studies(session: Session, code: str, uids: Iterable[str | None]) -> set[str]:
    """Of these study UIDs, those whose images arrived from an institution other than
    `code` (no data of those studies leaves this function but their UIDs, already the
    caller's)."""
    wanted = sorted({u for u in uids if u})
    if not wanted:
        return set()
    rows = session.execute(
        select(ImageStudy.study_instance_uid).where(
            ImageStudy.study_instance_uid.in_(wanted), ImageStudy.institution_code != code
        )
    ).scalars()
    return set(rows)


def refuse_foreign_study(session: Session, code: str, uid: str | None) -> None:
    if uid and foreign_studies(session, code, [uid]):
        raise ForeignStudy()


def may_relink(exam: Exam, study: ImageStudy) -> bool:
    """An arrival matched by accession no. links the exam only if the exam has no study
    yet or names this one: a matching accession never moves an exam to another study.
    Refused, the study waits on the reconciliation list (logged without personal data)."""
    if exam.study_instance_uid in (None, study.study_instance_uid):
        return True
    log.warning(
        "arrival not linked: exam id %s already has another study; study %s goes to reconciliation",
        exam.id,
        study.study_instance_uid,
    )
    return False


# The facts of one study for services/access.py, in one statement: its institution (as
# lookup_sql.study_institution: arrivals, else exams) and whether a live grant lets the
# caller's institution, or the caller alone, read it (as lookup_sql.has_grant).
STUDY_FACTS_SQL = (
    f"SELECT ({lookup_sql.STUDY_INSTITUTION_SQL}) AS owner,\n"
    f"       EXISTS ({lookup_sql.GRANT_SQL}) AS granted"
)


async def study_facts(pool: AsyncConnectionPool, who: Principal, uid: str | None) -> StudyFacts:
    """What the index holds about the study `uid` for this caller (None: no study named).
    A UID holding NUL is refused (422 naming study_instance_uid)."""
    if uid is None:
        return StudyFacts(None)
    if "\x00" in uid:  # PostgreSQL text holds no NUL: refused, never read as a new study
        raise InvalidRecord("study_instance_uid", "a UID holds no NUL character")
    async with pool.connection() as conn:
        cursor = await conn.execute(
            STUDY_FACTS_SQL,
            {"uid": uid, "institution": who.institution, "subject": who.subject},
            prepare=True,
        )
        row = await cursor.fetchone()
    owner, granted = row if row else (None, False)
    return StudyFacts(uid, None if owner is None else str(owner), bool(granted))


async def arrival_facts(pool: AsyncConnectionPool, uid: str) -> StudyFacts:
    """The study with its owner by arrival alone (image_studies; None: no arrival yet)."""
    return StudyFacts(uid, await lookup_sql.arrival_owner(pool, uid))
