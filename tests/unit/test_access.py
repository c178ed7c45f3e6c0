"""The one access decision (indexer/services/access.py), pure: principals against the
facts of studies, with the answer expected in every cell. No database, no request."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

from indexer.errors import Forbidden, InvalidRecord, NotFound
from indexer.security.auth import Principal
from indexer.services import access, decision
from indexer.services.access import StudyFacts


def _who(name: str, institution: str | None, *roles: str) -> Principal:
    return Principal(f"sub-{name}", name, institution, frozenset(roles))


WHO = {
    "admin": _who("admin", None, "platform-admin"),
    "rad_a": _who("rad_a", "H0001", "radiologist"),
    "clin_b": _who("clin_b", "H0002", "clinician"),
    "hadmin_a": _who("hadmin_a", "H0001", "hospital-admin"),
    "gw_a": _who("gw_a", "H0001", "gateway"),
    "gw_b": _who("gw_b", "H0002", "gateway"),
    "auditor": _who("auditor", None, "auditor"),
    "rad_nowhere": _who("rad_nowhere", None, "radiologist"),  # no institution claim
    "gw_nowhere": _who("gw_nowhere", None, "gateway"),
}
STUDY = {
    "A": StudyFacts("1.2.1", "H0001"),
    "B": StudyFacts("1.2.2", "H0002"),
    "B granted": StudyFacts("1.2.2", "H0002", granted=True),
    "new": StudyFacts("1.2.3"),  # the index knows no owner
    "no study": StudyFacts(None),  # the request names none
}
COLUMNS = tuple(STUDY)

# fmt: off
READ_VIEWER = {          # A      B      B gr.  new    no study
    "admin":            (True,  True,  True,  True,  True),
    "rad_a":            (True,  False, True,  False, False),
    "clin_b":           (False, True,  True,  False, False),
    "hadmin_a":         (True,  False, True,  False, False),
    "gw_a":             (False, False, False, False, False),
    "gw_b":             (False, False, False, False, False),
    "auditor":          (False, False, False, False, False),
    "rad_nowhere":      (False, False, False, False, False),
    "gw_nowhere":       (False, False, False, False, False),
}
READ_EDGE = {            # A      B      B gr.  new    no study (see may_read_resource)
    "admin":            (True,  True,  True,  True,  True),
    "rad_a":            (False, False, False, False, False),
    "clin_b":           (False, False, False, False, False),
    "hadmin_a":         (False, False, False, False, False),
    "gw_a":             (True,  False, True,  False, False),
    "gw_b":             (False, True,  True,  False, False),
    "auditor":          (False, False, False, False, False),
    "rad_nowhere":      (False, False, False, False, False),
    "gw_nowhere":       (False, False, False, False, False),
}
ADD = {                  # A      B      B gr.  new    no study (names none: refused)
    "admin":            (True,  True,  True,  True,  False),
    "rad_a":            (False, False, False, False, False),
    "clin_b":           (False, False, False, False, False),
    "hadmin_a":         (False, False, False, False, False),
    "gw_a":             (True,  False, False, True,  False),
    "gw_b":             (False, True,  True,  True,  False),
    "auditor":          (False, False, False, False, False),
    "rad_nowhere":      (False, False, False, False, False),
    "gw_nowhere":       (False, False, False, False, False),
}
BREAK_GLASS = {          # A      B      B gr.  new    no study
    "admin":            (403,   403,   403,   403,   403),
    "rad_a":            (422,   200,   200,   404,   404),
    "clin_b":           (200,   422,   422,   404,   404),
    "hadmin_a":         (403,   403,   403,   403,   403),
    "gw_a":             (403,   403,   403,   403,   403),
    "auditor":          (403,   403,   403,   403,   403),
    "rad_nowhere":      (403,   403,   403,   403,   403),
}
# fmt: on


def _cells(table: Mapping[str, tuple[object, ...]]) -> list[tuple[str, str, object]]:
    return [(w, s, row[i]) for w, row in table.items() for i, s in enumerate(COLUMNS)]


@pytest.mark.parametrize(("who", "study", "expected"), _cells(READ_VIEWER))
def test_a_viewer_reads_own_and_granted_studies(who: str, study: str, expected: bool) -> None:
    decision = access.may_read(WHO[who], STUDY[study], "viewer")
    assert decision.allowed is expected
    assert decision.allowed or decision.message == "not allowed"  # the gateway's one text


@pytest.mark.parametrize(("who", "study", "expected"), _cells(READ_EDGE))
def test_an_edge_reads_its_hospitals_and_granted_studies(
    who: str, study: str, expected: bool
) -> None:
    assert access.may_read(WHO[who], STUDY[study], "edge").allowed is expected


@pytest.mark.parametrize(("who", "study", "expected"), _cells(ADD))
def test_a_gateway_adds_to_its_own_or_a_new_study(who: str, study: str, expected: bool) -> None:
    decision = access.may_add(WHO[who], STUDY[study])
    assert decision.allowed is expected
    assert decision.allowed or decision.message == "this study belongs to another institution"


@pytest.mark.parametrize(("who", "study", "status"), _cells(BREAK_GLASS))
def test_break_glass_is_for_another_institutions_known_study(
    who: str, study: str, status: int
) -> None:
    decision = access.may_break_glass(WHO[who], STUDY[study])
    assert (200 if decision else decision.status) == status


def test_a_grant_without_an_owner_by_arrival_opens_nothing() -> None:
    orphan = StudyFacts("1.2.9", None, granted=True)
    assert not access.may_read(WHO["rad_a"], orphan, "viewer")
    assert not access.may_read(WHO["gw_a"], orphan, "edge")


@pytest.mark.parametrize(
    ("who", "code", "expected"),
    [
        ("rad_a", "H0001", True),
        ("hadmin_a", "H0001", True),
        ("rad_a", "H0002", False),
        ("gw_a", "H0001", False),
        ("admin", "H0001", False),  # share links are the study's own staff's
        ("rad_nowhere", "H0001", False),
    ],
)
def test_share_links_are_made_by_the_studys_own_staff(who: str, code: str, expected: bool) -> None:
    assert access.may_share(WHO[who], code).allowed is expected


def test_a_share_link_reads_its_one_study_only() -> None:
    assert access.may_read_by_link("1.2.1", "1.2.1", write=False)
    assert not access.may_read_by_link("1.2.1", "1.2.1", write=True)
    assert not access.may_read_by_link("1.2.1", "1.2.2", write=False)
    assert not access.may_read_by_link("1.2.1", None, write=False)


@pytest.mark.parametrize(
    ("who", "study", "expected"),
    [
        ("gw_a", "A", True),
        ("gw_a", "B", False),
        ("gw_a", "B granted", False),  # a grant lets one read, not push on
        ("gw_a", "new", False),
        ("gw_nowhere", "new", False),
        ("gw_nowhere", "A", False),
        ("rad_a", "A", False),  # a push is its hospital's gateway's, not its staff's
        ("hadmin_a", "A", False),
        ("admin", "B", True),
    ],
)
def test_a_hospital_pushes_its_own_studies(who: str, study: str, expected: bool) -> None:
    assert access.may_push(WHO[who], STUDY[study]).allowed is expected


@pytest.mark.parametrize("who", ["gw_a", "admin", "rad_a", "auditor"])
def test_a_push_naming_no_study_is_refused_for_everyone(who: str) -> None:
    for study in (None, STUDY["no study"]):
        refused = access.may_push(WHO[who], study)
        assert not refused and (refused.status, refused.field) == (422, "study_instance_uid")


def test_a_study_that_names_no_uid_opens_nothing() -> None:
    # central holds the resource, but its study has no StudyInstanceUID (uid "")
    unnamed = StudyFacts("")
    assert not access.may_read(WHO["gw_a"], unnamed, "edge")
    assert not access.may_read(WHO["rad_a"], unnamed, "viewer")
    assert not access.may_read_resource(WHO["gw_a"], unnamed)
    assert not access.may_add(WHO["gw_a"], unnamed)
    assert not access.may_push(WHO["gw_a"], unnamed)
    # a resource central does not hold (None): central answers 404, nothing to protect
    assert access.may_read_resource(WHO["gw_a"], None)
    assert access.may_read_resource(WHO["admin"], None)
    assert not access.may_read_resource(WHO["rad_a"], None)
    assert not access.may_read_resource(WHO["gw_nowhere"], None)
    assert access.may_read_resource(WHO["gw_a"], STUDY["A"])
    assert not access.may_read_resource(WHO["gw_a"], STUDY["B"])
    # but a request that names no study is no such resource: an edge reads nothing by it
    assert not access.may_read(WHO["gw_a"], StudyFacts(None), "edge")


def test_a_push_body_speaks_for_the_callers_own_institution() -> None:
    assert access.may_speak_for(WHO["gw_a"], "from_institution", "H0001")
    refused = access.may_speak_for(WHO["gw_a"], "from_institution", "H0002")
    assert refused.message == "from_institution must be the caller's own institution"
    assert not access.may_speak_for(WHO["gw_nowhere"], "institution", None)
    assert access.may_speak_for(WHO["admin"], "institution", "H0002")


def test_central_rest_api_is_the_admins_and_the_edges_listed_calls() -> None:
    assert access.may_use_central(WHO["admin"], listed=False).basis == access.WHOLE_ARCHIVE
    assert access.may_use_central(WHO["gw_a"], listed=True).basis == access.GATEWAY
    assert not access.may_use_central(WHO["gw_a"], listed=False)
    assert not access.may_use_central(WHO["rad_a"], listed=True)
    assert not access.may_use_central(WHO["gw_nowhere"], listed=True)
    assert access.may_list_pushes(WHO["gw_b"], ["H0002"])
    assert not access.may_list_pushes(WHO["gw_b"], ["H0002", "H0001"])
    assert not access.may_list_pushes(WHO["gw_b"], None)
    # a push list is a gateway's: not its institution's staff, nor an account of none
    assert not access.may_list_pushes(WHO["clin_b"], ["H0002"])
    assert not access.may_list_pushes(WHO["gw_nowhere"], [""])
    assert not access.may_list_pushes(WHO["gw_nowhere"], None)
    assert not access.may_speak_for(WHO["rad_a"], "from_institution", "H0001")


def test_records_are_written_by_writers_and_read_by_staff_of_their_institution() -> None:
    assert access.may_write_records(WHO["gw_a"], "H0001")
    assert access.may_write_records(WHO["hadmin_a"], "H0001")
    assert not access.may_write_records(WHO["rad_a"], "H0001")
    assert not access.may_write_records(WHO["gw_a"], "H0002")
    assert access.may_read_records(WHO["rad_a"], "H0001")
    assert not access.may_read_records(WHO["gw_a"], "H0001")
    assert access.may_read_records(WHO["admin"], "H0002")


def test_another_institutions_exam_needs_treating_staff_and_a_purpose() -> None:
    assert access.may_look_up_exam(WHO["rad_a"], "H0001", None).basis != access.MUTUAL_RECOGNITION
    foreign = access.may_look_up_exam(WHO["rad_a"], "H0002", "follow-up")
    assert foreign.basis == access.MUTUAL_RECOGNITION and foreign.scope == "H0001"
    assert "purpose" in access.may_look_up_exam(WHO["rad_a"], "H0002", None).message
    assert "clinician" in access.may_look_up_exam(WHO["hadmin_a"], "H0002", "x y").message
    assert not access.may_look_up_exam(WHO["rad_nowhere"], "H0002", "follow-up")
    arrival = StudyFacts("1.2.2", "H0002")
    assert access.may_open_by_mutual_recognition(arrival, "H0002")
    assert not access.may_open_by_mutual_recognition(arrival, "H0001")
    assert not access.may_open_by_mutual_recognition(StudyFacts("1.2.2"), "H0002")
    refused = access.may_grant_to("H0001", "H0001")
    assert (refused.allowed, refused.status, refused.field) == (False, 422, "to_institution")
    assert access.may_grant_to("H0001", "H0002")
    assert access.is_for_one_person("sub-rad_a") and not access.is_for_one_person(None)


def test_searches_alerts_reconciliation_and_the_audit_trail() -> None:
    assert access.may_search_studies(WHO["admin"]).scope == access.WHOLE_ARCHIVE
    assert access.unconfined(access.may_search_studies(WHO["admin"]))
    assert access.confined_to(access.may_search_studies(WHO["clin_b"])) == "H0002"
    assert access.may_search_studies(WHO["clin_b"]).scope == "H0002"
    assert not access.may_search_studies(WHO["gw_a"])
    assert access.unconfined(access.may_see_alerts(WHO["auditor"]))
    assert access.may_see_alert(WHO["auditor"], "H0002")
    assert access.may_see_alerts(WHO["hadmin_a"]).scope == "H0001"
    assert not access.may_see_alerts(WHO["rad_a"])
    assert access.may_see_alert(WHO["hadmin_a"], "H0001")
    assert access.may_see_alert(WHO["hadmin_a"], "H0002").status == 404
    assert access.may_list_unmatched(WHO["hadmin_a"], "H0001")
    assert not access.may_list_unmatched(WHO["hadmin_a"], None)
    assert not access.may_list_unmatched(WHO["hadmin_a"], "H0002")
    assert access.may_resolve(WHO["hadmin_a"], STUDY["A"])
    assert not access.may_resolve(WHO["hadmin_a"], STUDY["new"])
    assert access.may_read_audit(WHO["auditor"]) and not access.may_read_audit(WHO["admin"])
    assert access.may_report_edge_events(WHO["gw_a"])
    assert not access.may_report_edge_events(WHO["gw_nowhere"])
    assert access.may_use_explorer(WHO["admin"]) and not access.may_use_explorer(WHO["gw_a"])


def test_require_raises_the_refusal_with_its_status() -> None:
    with pytest.raises(Forbidden, match="break-glass is for"):
        access.require(access.may_break_glass(WHO["gw_a"], STUDY["B"]))
    with pytest.raises(NotFound):
        access.require(access.may_break_glass(WHO["rad_a"], STUDY["new"]))
    with pytest.raises(InvalidRecord) as raised:
        access.require(access.may_break_glass(WHO["rad_a"], STUDY["A"]))
    assert raised.value.field == "study_instance_uid"
    assert access.require(access.may_break_glass(WHO["rad_a"], STUDY["B"])).basis == "break-glass"


def test_a_scope_of_nothing_opens_nothing() -> None:
    # scope None means confined to nothing: never every institution
    nothing = access.allow("a decision without a scope")
    assert not access.unconfined(nothing)
    with pytest.raises(Forbidden):
        access.confined_to(nothing)
    with pytest.raises(Forbidden):
        access.confined_to(access.may_search_studies(WHO["admin"]))  # unconfined: ask first
    with pytest.raises(Forbidden):
        access.confined_to(access.may_search_studies(WHO["gw_a"]))  # refused
    stand_in = access.may_stand_in(WHO["gw_nowhere"])
    assert stand_in and stand_in.scope is None and not access.unconfined(stand_in)


# Accounts with no institution claim: stricter than anyone's (each call refuses them).
def test_an_account_of_no_institution_gets_nothing_of_an_institutions() -> None:
    hadmin_nowhere = _who("hadmin_nowhere", None, "hospital-admin")
    # reconciliation: no ?institution= lists nothing for a hospital admin, nor does one of none
    assert not access.may_list_unmatched(hadmin_nowhere, None)
    assert not access.may_list_unmatched(hadmin_nowhere, "H0001")
    assert access.may_list_unmatched(WHO["admin"], None).scope == access.WHOLE_ARCHIVE
    assert not access.may_resolve(hadmin_nowhere, STUDY["new"])
    assert not access.may_see_alerts(hadmin_nowhere)
    # push relay: no body speaks for no institution, no push is its own
    gw = WHO["gw_nowhere"]
    assert not access.may_speak_for(gw, "from_institution", None)
    assert not access.may_speak_for(gw, "institution", "")
    assert not access.may_push(gw, StudyFacts("1.2.3", None))
    assert not access.may_read_push(gw)
    # hash check: its studies are neither added to nor read, whatever they are
    assert not access.sees_whole_archive(gw)
    for study in STUDY.values():
        assert not access.may_add(gw, study)
        assert not access.may_read(gw, study, "edge") or study.uid is None
    assert not access.may_search_family_name(WHO["rad_nowhere"])
    assert not access.may_report_edge_events(gw)


def test_what_a_decision_is_knows_no_rule() -> None:
    """services/decision.py is the shape of an answer: it names no principal, role or
    institution check, so access.py stays the one place that decides."""
    tree = ast.parse(Path(decision.__file__).read_text(encoding="utf-8"))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.alias)}
    assert not names & {"Principal", "PLATFORM_ADMIN", "STAFF_ROLES", "WRITER_ROLES"}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not attributes & {"has", "roles", "institution"}
    assert access.require is decision.require and access.StudyFacts is decision.StudyFacts
