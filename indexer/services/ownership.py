"""Who owns a study: the institution whose edge's arrival record named it first
(`image_studies`). An exam record only links to a study; it never makes one its
institution's. A grant counts only while its owner is that institution (the SQL in
lookup_sql.GRANT_SQL and qido.RECENT_SQL/AMONG_SQL says the same).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Conflict
from ..models import Exam, ImageStudy

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
