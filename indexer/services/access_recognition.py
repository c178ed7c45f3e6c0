"""The 互认 workspace's access decisions (#16), in services/access.py's style: pure, a
principal and the facts in, a `Decision` out. To be folded into access.py (they live
here only so that their engineer did not edit a shared file while others did).

Who does what:
- a treating clinician or radiologist of an institution finds a patient by the MRN at
  their own hospital (scope: that institution), and records a decision on a prior exam
  of another institution (scope: their institution, the deciding one);
- a hospital admin reads the statistics of its own institution (by "exam": the decisions
  on its exams; by "deciding": those its clinicians made); a regulator reads every
  institution's. The statistics hold counts only, no patient data."""

from __future__ import annotations

from ..security.auth import Principal
from .decision import WHOLE_ARCHIVE, Decision, allow, refuse

TREATING = ("clinician", "radiologist")


def may_search_by_own_mrn(who: Principal) -> Decision:
    """A patient by MRN: only among the caller's own institution's patients (an MRN is
    an institution's own number), for treating staff of an institution."""
    if who.has(*TREATING) and who.institution:
        return allow("own institution's patients", who.institution)
    return refuse("a search by MRN is for clinicians and radiologists, at their own hospital")


def may_record_recognition(who: Principal, exam_institution: str) -> Decision:
    """A 互认 decision on a prior exam: by a treating clinician or radiologist of an
    institution, on an exam of another institution (recognising one's own hospital's exam
    is not 互认: 422). Scope: the deciding institution, which the decision is recorded
    for (never one the caller names)."""
    if not (who.has(*TREATING) and who.institution):
        return refuse("互认 decisions are recorded by clinicians and radiologists of a hospital")
    if exam_institution == who.institution:
        return refuse(
            "this exam is your own hospital's: a 互认 decision is on another hospital's exam",
            "own institution's exam",
            422,
            "master_index_id",
        )
    return allow("treating staff of another institution", who.institution)


def may_read_recognition_statistics(who: Principal, institution: str | None) -> Decision:
    """The recognition statistics. A regulator: every institution's (scope WHOLE_ARCHIVE;
    `institution` then only filters). A hospital admin: its own institution's (scope:
    it), and asking for another one's is refused. Nobody else (clinicians record
    decisions; they do not read how their colleagues decide)."""
    if who.has("regulator"):
        return allow("regulator", WHOLE_ARCHIVE)
    if who.has("hospital-admin") and who.institution:
        if institution is None or institution == who.institution:
            return allow("own institution's statistics", who.institution)
        return refuse("a hospital admin reads its own institution's statistics")
    return refuse("the recognition statistics are for hospital admins and regulators")
