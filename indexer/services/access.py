"""One access decision: whether a caller may read, add to, share or push a study, and the
indexer's other questions of access (records, searches, alerts, the audit trail).

Pure: a principal and the facts the index holds (`StudyFacts`, loaded by
services/ownership.py) in, a `Decision` out; no database, no request. The routes load the
facts, call one of these and act on the answer; they never compare institutions, owners or
roles themselves (tests/unit/test_access_routes.py walks them to check). A refusal's
`message` is the text the caller gets; `basis` says in a word why, for logs and tests.
What a decision is, and how a route acts on one (`require`, `confined_to`), is
services/decision.py's, re-exported here; the rules are all in this module.
"""

from __future__ import annotations

from ..security.auth import PLATFORM_ADMIN, STAFF_ROLES, WRITER_ROLES, Principal
from .decision import (
    GATEWAY,
    MUTUAL_RECOGNITION,
    NOT_ALLOWED,
    WHOLE_ARCHIVE,
    Decision,
    StudyFacts,
    Via,
    allow,
    refuse,
    unconfined,
)
from .decision import confined_to as confined_to  # re-exported: routes name only `access`
from .decision import require as require


def _admin(who: Principal) -> bool:
    return who.has(PLATFORM_ADMIN)


def _own(who: Principal, owner: str | None) -> bool:
    return owner is not None and owner == who.institution


# --- a study: read, add, share, push, break-glass ------------------------------------


def may_read(who: Principal, study: StudyFacts, via: Via) -> Decision:
    """A study's images. Platform administrators read all. Otherwise the study must be the
    caller's institution's, or granted to it (or to the caller alone). A viewer is staff of
    an institution, and a request naming no single study (a search across studies) is
    refused. An edge is its hospital's gateway account, and a request naming no study is
    refused too (a resource central does not hold: may_read_resource)."""
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if via == "viewer":
        if study.uid is None:
            return refuse(NOT_ALLOWED, "no single study")
        if not (who.roles & STAFF_ROLES and who.institution):
            return refuse(NOT_ALLOWED, "not staff of an institution")
    else:
        if not (who.has("gateway") and who.institution):
            return refuse(NOT_ALLOWED, "not a hospital's gateway")
        if not study.uid:
            return refuse(NOT_ALLOWED, "no single study")
    if _own(who, study.owner):
        return allow("own institution's study", who.institution)
    if study.owner is not None and study.granted:
        return allow("granted", who.institution)
    return refuse(NOT_ALLOWED, "another institution's study")


def may_read_resource(who: Principal, study: StudyFacts | None) -> Decision:
    """An Orthanc resource of central's for an edge (a study's instance list, an
    instance's file). None: central holds no such resource, let through for a hospital's
    gateway (central answers 404 itself, there is nothing to protect); else its study, as
    may_read by an edge (a study whose resource names no UID, uid "", is refused)."""
    if study is not None or _admin(who):
        return may_read(who, study or StudyFacts(None), "edge")
    if who.has("gateway") and who.institution:
        return allow("no such resource at central", who.institution)
    return refuse(NOT_ALLOWED, "not a hospital's gateway")


def may_read_by_link(link_study: str, uid: str | None, write: bool) -> Decision:
    """A patient's share link (云胶片): reads of its one study, nothing else."""
    if not write and uid is not None and uid == link_study:
        return allow("share link")
    return refuse(NOT_ALLOWED, "share link: another study, or a write")


def may_write_images(who: Principal) -> Decision:
    """STOW-RS through DICOMweb: platform administrators only (edges upload through
    central's REST API, checked by may_add)."""
    return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE) if _admin(who) else refuse(NOT_ALLOWED, "STOW-RS")


def may_add(who: Principal, study: StudyFacts) -> Decision:
    """An instance into a study: a hospital's gateway adds to its hospital's studies, or
    starts a new one (no owner yet); a platform administrator adds to any. A request that
    names no study (uid None) adds to none."""
    refused = refuse("this study belongs to another institution", "another institution's study")
    if not study.uid:
        return refused
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if not (who.has("gateway") and who.institution):
        return refused
    if study.owner is None:
        return allow("a new study", who.institution)
    return allow("own institution's study", who.institution) if _own(who, study.owner) else refused


def may_share(who: Principal, code: str) -> Decision:
    """Share links of an institution's studies: made, listed and revoked by its staff."""
    if who.roles & STAFF_ROLES and who.institution == code:
        return allow("own institution's staff", code)
    return refuse("share links are made by the study's own institution's staff")


def held_by(code: str, study: StudyFacts) -> Decision:
    """The study (or a grant or link of it) is this institution's: else 404, as if the
    path named nothing."""
    if study.owner is not None and study.owner == code:
        return allow("the institution's study", code)
    return refuse("no study with this UID at this institution", "not there", 404)


def may_speak_for(who: Principal, claimant: str, claimed: object) -> Decision:
    """A body's institution field (`claimant`: a push's sender, a push report's receiver)
    names the caller's own institution (a hospital's gateway); platform administrators
    speak for any."""
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if who.has("gateway") and who.institution and claimed == who.institution:
        return allow("own institution", who.institution)
    return refuse(f"{claimant} must be the caller's own institution")


def may_push(who: Principal, study: StudyFacts | None) -> Decision:
    """A new push (跨院推送): a hospital's gateway pushes its hospital's own studies; a
    platform administrator any. None: the body names no study (a string): refused, 422."""
    if study is None or not study.uid:
        return refuse("a push names its study", "no study", 422, "study_instance_uid")
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if who.has("gateway") and who.institution and _own(who, study.owner):
        return allow("own institution's study", who.institution)
    return refuse("a hospital pushes its own studies")


def may_break_glass(who: Principal, study: StudyFacts) -> Decision:
    """Emergency access to another institution's study, for a clinician or radiologist of
    an institution, alone."""
    if not (who.has("radiologist", "clinician") and who.institution):
        return refuse("break-glass is for clinicians and radiologists of an institution")
    if study.owner is None:
        return refuse("no study with this UID", "unknown study", 404)
    if _own(who, study.owner):
        return refuse(
            "your own institution's study needs no break-glass",
            "own institution's study",
            422,
            "study_instance_uid",
        )
    return allow("break-glass", who.institution)


def may_open_by_mutual_recognition(arrival: StudyFacts, exam_institution: str) -> Decision:
    """A 互认 lookup of an exam opens its study only when the exam's institution owns the
    study by arrival: an exam naming another hospital's study, or one with no arrival
    yet, opens nothing (services/ownership.py). `arrival.owner`: the owner by arrival."""
    if arrival.uid is not None and arrival.owner is not None and arrival.owner == exam_institution:
        return allow("the exam's institution's study", exam_institution)
    return refuse("the exam's institution does not own this study by arrival", "not by arrival")


def may_grant_to(code: str, to_institution: str) -> Decision:
    """A grant of an institution's study is to another institution (422 on
    to_institution otherwise)."""
    if to_institution != code:
        return allow("another institution", to_institution)
    return refuse("must be another institution", "own institution", 422, "to_institution")


def is_for_one_person(grantee_subject: str | None) -> bool:
    """A grant to one person (break-glass), not to an institution."""
    return grantee_subject is not None


# --- central's REST API, for hospital gateways ---------------------------------------


def may_use_central(who: Principal, listed: bool) -> Decision:
    """Central's REST API: platform administrators all of it; a hospital's gateway the
    calls its edge makes (`listed`), each then decided by its own check (basis GATEWAY)."""
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if listed and who.has("gateway") and who.institution:
        return allow(GATEWAY, who.institution)
    return refuse(NOT_ALLOWED, "not a call of the edge's")


def may_stand_in(who: Principal) -> Decision:
    """The indexer's routes standing in for central's calls whose subject is in the body
    (uploads, lookups, hash checks, pushes): platform administrators and gateway accounts,
    each call then deciding on what its body names (a gateway with no institution claim is
    let in, and each call then refuses it: scope None)."""
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if who.has("gateway"):
        return allow(GATEWAY, who.institution)
    return refuse(NOT_ALLOWED, "not a gateway")


def sees_whole_archive(who: Principal) -> bool:
    """Platform administrators: every study, unconfined (a hash check's full answer)."""
    return _admin(who)


def may_list_pushes(who: Principal, to: list[str] | None) -> Decision:
    """A push list: exactly the caller's own institution's (`to`: the query's receivers,
    None when the query has any other shape), for a hospital's gateway."""
    if who.has("gateway") and who.institution and to == [who.institution]:
        return allow("own institution's pushes", who.institution)
    return refuse(NOT_ALLOWED, "another institution's pushes")


def may_read_push(who: Principal) -> Decision:
    """One push by its ID, for a hospital's gateway: central answers it to the push's
    sender and receiver only."""
    if who.has("gateway") and who.institution:
        return allow("central checks the push's parties", who.institution)
    return refuse(NOT_ALLOWED, "not a hospital's gateway")


# --- records, searches, alerts, the audit trail --------------------------------------


def may_write_records(who: Principal, code: str) -> Decision:
    """Record intake for an institution: its own gateway or admin, or a platform admin."""
    if _admin(who) or (who.roles & WRITER_ROLES and who.institution == code):
        return allow("writer of the institution", code)
    return refuse("this account may not write records of that institution")


def may_read_records(who: Principal, code: str) -> Decision:
    """An institution's own records: its staff, or a platform admin."""
    if _admin(who) or (who.roles & STAFF_ROLES and who.institution == code):
        return allow("staff of the institution", code)
    return refuse("this account may not read records of that institution")


def may_register_institution(who: Principal) -> Decision:
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    return refuse("only platform administrators register institutions")


def may_search_persons(who: Principal) -> Decision:
    """互认 lookups across institutions: treating clinicians and radiologists."""
    if who.has("clinician", "radiologist", PLATFORM_ADMIN):
        return allow("treating staff", WHOLE_ARCHIVE)
    return refuse("person-level lookups need a clinician or radiologist account")


def may_search_family_name(who: Principal) -> Decision:
    """A family-name search, among the caller's own institution's patients."""
    if who.institution:
        return allow("own institution's patients", who.institution)
    return refuse("a family-name search is among your own institution's patients")


def may_look_up_exam(who: Principal, exam_institution: str, purpose: str | None) -> Decision:
    """An exam by its master index ID: its institution's staff (and platform admins); for
    another institution's exam (互认), a treating clinician or radiologist of an
    institution who states a purpose (basis MUTUAL_RECOGNITION: the study opens to the
    caller's institution)."""
    own = may_read_records(who, exam_institution)
    if own:
        return own
    persons = may_search_persons(who)
    if not persons:
        return persons
    if not purpose or not who.institution:
        return refuse("another institution's exam: state the purpose of the lookup (?purpose=...)")
    return allow(MUTUAL_RECOGNITION, who.institution)


def may_search_studies(who: Principal) -> Decision:
    """QIDO-RS study searches: platform administrators the whole archive (scope
    WHOLE_ARCHIVE); staff their institution's studies and those granted to it (scope: the
    institution)."""
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    if who.roles & STAFF_ROLES and who.institution:
        return allow("own and granted studies", who.institution)
    return refuse(NOT_ALLOWED, "not staff of an institution")


def may_list_unmatched(who: Principal, institution: str | None) -> Decision:
    """The reconciliation list: platform admins all of it, hospital admins their own
    (a hospital admin with no institution claim: none)."""
    if _admin(who):
        return allow("reconciliation", institution or WHOLE_ARCHIVE)
    if who.has("hospital-admin") and institution is not None and institution == who.institution:
        return allow("reconciliation", institution)
    return refuse("hospital admins list their own institution (?institution=CODE)")


def may_resolve(who: Principal, study: StudyFacts) -> Decision:
    """Link an unmatched study to an exam: its institution's admins, or platform admins."""
    if _admin(who):
        return allow("reconciliation", study.owner or WHOLE_ARCHIVE)
    if who.has("hospital-admin") and _own(who, study.owner):
        return allow("reconciliation", study.owner)
    return refuse("only the study's institution admins or platform admins resolve it")


def may_see_alerts(who: Principal) -> Decision:
    """Alerts: auditors and platform admins all (scope WHOLE_ARCHIVE), hospital admins
    those of their institution's studies (scope: the institution)."""
    if who.has("auditor", PLATFORM_ADMIN):
        return allow("every alert", WHOLE_ARCHIVE)
    if who.has("hospital-admin") and who.institution:
        return allow("own institution's alerts", who.institution)
    return refuse("alerts are for auditors and hospital or platform administrators")


def may_see_alert(who: Principal, owner: str) -> Decision:
    """One alert, about a study of `owner`: 404 outside the caller's scope."""
    seen = may_see_alerts(who)
    if seen and (unconfined(seen) or (seen.scope is not None and seen.scope == owner)):
        return seen
    return refuse("no such alert", "outside the caller's alerts", 404)


def may_read_audit(who: Principal) -> Decision:
    if who.has("auditor"):
        return allow("auditor")
    return refuse("the audit trail is for auditors")


def may_report_edge_events(who: Principal) -> Decision:
    if who.has("gateway") and who.institution:
        return allow(GATEWAY, who.institution)
    return refuse("edge events are reported by a hospital's gateway account")


def may_use_explorer(who: Principal) -> Decision:
    if _admin(who):
        return allow(WHOLE_ARCHIVE, WHOLE_ARCHIVE)
    return refuse("Orthanc Explorer is for platform administrators")


# --- the platform's web pages ------------------------------------------------------------


def may_use_console(who: Principal) -> Decision:
    """The operator console: platform admins every gateway (WHOLE_ARCHIVE), hospital admins
    their institution's (scope: the institution)."""
    if _admin(who):
        return allow("platform operator", WHOLE_ARCHIVE)
    if who.has("hospital-admin") and who.institution:
        return allow("hospital operator", who.institution)
    return refuse("the operator console is for hospital and platform administrators")


def may_use_workspace(who: Principal) -> Decision:
    """The 互认 workspace: treating staff look up prior exams there; hospital admins and
    regulators read its statistics. What each may do inside is decided per action."""
    if who.has("clinician", "radiologist") and who.institution:
        return allow("treating staff", who.institution)
    if who.has("hospital-admin") and who.institution:
        return allow("hospital statistics", who.institution)
    if who.has("regulator"):
        return allow("regulator", WHOLE_ARCHIVE)
    return refuse(
        "the 互认 workspace is for clinicians, radiologists, hospital admins and regulators"
    )


# --- 互认 decisions and their statistics (#16) --------------------------------------------
# A treating clinician or radiologist finds a patient by the MRN at their own hospital and
# records decisions on other hospitals' exams; hospital admins read their institution's
# statistics, regulators every institution's (counts only, no patient data).

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
