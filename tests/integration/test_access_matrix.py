"""The access matrix (issue #6): every principal against every kind of endpoint, through the
gateway, with the expected answer in every cell: DICOMweb of a study of each hospital, STOW-RS,
central Orthanc's own REST API behind /orthanc/, and the indexer API (a route of every file in
indexer/api/routes).

`EXPECTED` is the table; one test case per cell, named "<endpoint> | <principal>". A cell is
a status code, or for searches whether the cell's study is in the answer. `DEFECTS` names the
cells where the system answers otherwise today, and why that is wrong (strict xfail: a fix makes
them fail until the entry is removed). Every cell is decided by indexer/services/access.py, and
`test_no_route_decides_on_its_own` asserts that no route decides on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, wait_for_instances

from ..unit.test_access_routes import route_decisions
from .access_requests import (
    HIDDEN,
    SHOWN,
    WITHHELD,
    Expected,
    Held,
    arrival,
    dicom_bytes,
    send,
    stow_body,
    verdict,
)
from .fresh import fresh_seed
from .test_orthanc_via_gateway import gateway_token

PRINCIPALS = ("admin", "rad_a", "rad_b", "auditor", "gw_a", "gw_b", "hadmin_a", "clin_b")

DICOM_JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
NO_SUCH_ORTHANC_ID = "00000000-00000000-00000000-00000000-00000000"
NO_SUCH_GRANT = 2_000_000_000
NO_SUCH_STUDY = "1.2.826.0.1.3680043.8.498.1"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a str.format template over `a` and `b` (Held)
    body: str | None = None  # how to fill the request: see `request_for`
    marker: str | None = None  # template: what shows the cell's study in an answer
    headers: tuple[tuple[str, str], ...] = ()


def dicomweb(path: str, marker: str | None = None, accept: dict[str, str] = DICOM_JSON) -> Endpoint:
    return Endpoint("GET", path, marker=marker, headers=tuple(accept.items()))


ENDPOINTS: dict[str, Endpoint] = {
    # DICOMweb (nginx asks the indexer; study searches are answered by the indexer)
    "WADO metadata A": dicomweb("/dicom-web/studies/{a.uid}/metadata"),
    "WADO series list A": dicomweb("/dicom-web/studies/{a.uid}/series"),
    "WADO frame A": dicomweb(
        "/dicom-web/studies/{a.uid}/series/{a.series}/instances/{a.sop}/frames/1", accept=FRAMES
    ),
    "QIDO by UID A": dicomweb("/dicom-web/studies?StudyInstanceUID={a.uid}", marker="{a.uid}"),
    "WADO metadata B": dicomweb("/dicom-web/studies/{b.uid}/metadata"),
    "WADO series list B": dicomweb("/dicom-web/studies/{b.uid}/series"),
    "WADO frame B": dicomweb(
        "/dicom-web/studies/{b.uid}/series/{b.series}/instances/{b.sop}/frames/1", accept=FRAMES
    ),
    "QIDO by UID B": dicomweb("/dicom-web/studies?StudyInstanceUID={b.uid}", marker="{b.uid}"),
    "STOW-RS into study A": Endpoint("POST", "/dicom-web/studies", body="stow a"),
    "STOW-RS into study B": Endpoint("POST", "/dicom-web/studies", body="stow b"),
    # central Orthanc's REST API
    "Orthanc GET /system": Endpoint("GET", "/orthanc/system"),
    "Orthanc GET /patients": Endpoint("GET", "/orthanc/patients"),
    "Orthanc study instances A": Endpoint("GET", "/orthanc/studies/{a.orthanc_study}/instances"),
    "Orthanc study instances B": Endpoint("GET", "/orthanc/studies/{b.orthanc_study}/instances"),
    "Orthanc instance file A": Endpoint("GET", "/orthanc/instances/{a.orthanc_instance}/file"),
    "Orthanc instance file B": Endpoint("GET", "/orthanc/instances/{b.orthanc_instance}/file"),
    "Orthanc lookup of UID A": Endpoint(
        "POST", "/orthanc/tools/lookup", body="uid a", marker="{a.orthanc_study}"
    ),
    # a UID holding NUL names no study of the index: refused (422), not read as a new study
    "Orthanc lookup of a UID with NUL": Endpoint("POST", "/orthanc/tools/lookup", body="uid nul"),
    "Orthanc upload into study A": Endpoint("POST", "/orthanc/instances", body="dicom a"),
    "Orthanc pushes to B": Endpoint("GET", "/orthanc/imaging-cloud/pushes?to=H0002"),
    "Orthanc DELETE unknown study": Endpoint("DELETE", f"/orthanc/studies/{NO_SUCH_ORTHANC_ID}"),
    # the indexer API, a route of every file in indexer/api/routes
    "health": Endpoint("GET", "/api/healthz"),
    "authz (gateway only)": Endpoint("GET", "/api/v1/authz/dicomweb"),
    "patient A": Endpoint("GET", "/api/v1/institutions/H0001/patients/{a.mrn}"),
    "exam A": Endpoint("GET", "/api/v1/institutions/H0001/exams/{a.exam_no}"),
    "patient B": Endpoint("GET", "/api/v1/institutions/H0002/patients/{b.mrn}"),
    "exam B": Endpoint("GET", "/api/v1/institutions/H0002/exams/{b.exam_no}"),
    "patient A intake": Endpoint(
        "PUT", "/api/v1/institutions/H0001/patients/{a.mrn}", body="patient a"
    ),
    "arrival of study A": Endpoint("POST", "/api/v1/institutions/H0001/studies", body="arrival a"),
    "reconciliation list": Endpoint("GET", "/api/v1/reconciliation"),
    "reconciliation list of A": Endpoint("GET", "/api/v1/reconciliation?institution=H0001"),
    "master index A": Endpoint("GET", "/api/v1/master-index/{a.master_index_id}"),
    "master index B": Endpoint("GET", "/api/v1/master-index/{b.master_index_id}"),
    "person search (patient A)": Endpoint("POST", "/api/v1/persons/exams/search", body="person a"),
    "audit trail": Endpoint("GET", "/api/v1/audit?limit=1"),
    "grants of study A": Endpoint("GET", "/api/v1/institutions/H0001/studies/{a.uid}/grants"),
    "revoke unknown grant of A": Endpoint(
        "DELETE", f"/api/v1/institutions/H0001/studies/{{a.uid}}/grants/{NO_SUCH_GRANT}"
    ),
    "alerts": Endpoint("GET", "/api/v1/alerts?limit=1"),
    "break-glass, unknown study": Endpoint("POST", "/api/v1/break-glass", body="break glass"),
    "share links of study A": Endpoint(
        "GET", "/api/v1/institutions/H0001/studies/{a.uid}/share-links"
    ),
}

# A cell is the answer that is right. Platform admins read everything but the audit trail,
# which is the auditors' (and they read nothing else but alerts). Gateway accounts are their
# hospital's machines: they write its records and move its images, and read neither records
# nor images through DICOMweb. A person search across hospitals (互认) is for radiologists and
# clinicians, its purpose audited. 404: the caller may act, and nothing is there.
# fmt: off
EXPECTED: dict[str, tuple[Expected, ...]] = {
    #                                 admin     rad_a     rad_b     auditor   gw_a      gw_b      hadmin_a  clin_b
    "WADO metadata A":               (200,      200,      403,      403,      403,      403,      200,      403),
    "WADO series list A":            (200,      200,      403,      403,      403,      403,      200,      403),
    "WADO frame A":                  (200,      200,      403,      403,      403,      403,      200,      403),
    "QIDO by UID A":                 (SHOWN,    SHOWN,    HIDDEN,   403,      403,      403,      SHOWN,    HIDDEN),
    "WADO metadata B":               (200,      403,      200,      403,      403,      403,      403,      200),
    "WADO series list B":            (200,      403,      200,      403,      403,      403,      403,      200),
    "WADO frame B":                  (200,      403,      200,      403,      403,      403,      403,      200),
    "QIDO by UID B":                 (SHOWN,    HIDDEN,   SHOWN,    403,      403,      403,      HIDDEN,   SHOWN),
    "STOW-RS into study A":          (200,      403,      403,      403,      403,      403,      403,      403),
    "STOW-RS into study B":          (200,      403,      403,      403,      403,      403,      403,      403),
    "Orthanc GET /system":           (200,      403,      403,      403,      403,      403,      403,      403),
    "Orthanc GET /patients":         (200,      403,      403,      403,      403,      403,      403,      403),
    "Orthanc study instances A":     (200,      403,      403,      403,      200,      403,      403,      403),
    "Orthanc study instances B":     (200,      403,      403,      403,      403,      200,      403,      403),
    "Orthanc instance file A":       (200,      403,      403,      403,      200,      403,      403,      403),
    "Orthanc instance file B":       (200,      403,      403,      403,      403,      200,      403,      403),
    "Orthanc lookup of UID A":       (SHOWN,    403,      403,      403,      SHOWN,    WITHHELD, 403,      403),
    "Orthanc lookup of a UID with NUL": (422,   403,      403,      403,      422,      422,      403,      403),
    "Orthanc upload into study A":   (200,      403,      403,      403,      200,      403,      403,      403),
    "Orthanc pushes to B":           (200,      403,      403,      403,      403,      200,      403,      403),
    "Orthanc DELETE unknown study":  (404,      403,      403,      403,      403,      403,      403,      403),
    "health":                        (200,      200,      200,      200,      200,      200,      200,      200),
    "authz (gateway only)":          (404,      404,      404,      404,      404,      404,      404,      404),
    "patient A":                     (200,      200,      403,      403,      403,      403,      200,      403),
    "exam A":                        (200,      200,      403,      403,      403,      403,      200,      403),
    "patient B":                     (200,      403,      200,      403,      403,      403,      403,      200),
    "exam B":                        (200,      403,      200,      403,      403,      403,      403,      200),
    "patient A intake":              (200,      403,      403,      403,      200,      403,      200,      403),
    "arrival of study A":            (200,      403,      403,      403,      200,      403,      200,      403),
    "reconciliation list":           (200,      403,      403,      403,      403,      403,      403,      403),
    "reconciliation list of A":      (200,      403,      403,      403,      403,      403,      200,      403),
    "master index A":                (200,      200,      403,      403,      403,      403,      200,      403),
    "master index B":                (200,      403,      200,      403,      403,      403,      403,      200),
    "person search (patient A)":     (200,      200,      200,      403,      403,      403,      403,      200),
    "audit trail":                   (403,      403,      403,      200,      403,      403,      403,      403),
    "grants of study A":             (200,      200,      403,      403,      403,      403,      200,      403),
    "revoke unknown grant of A":     (404,      403,      403,      403,      404,      403,      404,      403),
    "alerts":                        (200,      403,      403,      200,      403,      403,      200,      403),
    "break-glass, unknown study":    (403,      404,      404,      403,      403,      403,      403,      404),
    "share links of study A":        (403,      200,      403,      403,      403,      403,      200,      403),
}
# fmt: on

# Cells the system answers wrongly today (reported with the evidence; see the module doc).
DEFECTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def principals(stack: StackClient, tokens: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    """One gateway client per principal, each with its token (fetched once per module)."""
    token = {
        **tokens,
        "gw_a": gateway_token(stack, "H0001"),
        "gw_b": gateway_token(stack, "H0002"),
    }
    with ExitStack() as clients:
        yield {who: clients.enter_context(stack.gateway(token[who])) for who in PRINCIPALS}


@pytest.fixture(scope="module")
def world(stack: StackClient, principals: dict[str, httpx.Client]) -> dict[str, Held]:
    """A study of hospital A through edge A and one of B through edge B, each registered by
    its hospital (patient, exam) and known to the indexer as that hospital's."""
    sent = {
        "A": make_study(fresh_seed(), "DX", instances=1, institution_code="H0001"),
        "B": make_study(
            fresh_seed(),
            "DX",
            instances=1,
            institution_code="H0002",
            institution_name="Demo Hospital B",
        ),
    }
    for edge, study in sent.items():
        hospital = principals[f"gw_{edge.lower()}"]
        base = f"/api/v1/institutions/{study.exam.institution_code}"
        for path, record in (
            (f"{base}/patients/{study.patient.mrn}", patient_record(study)),
            (f"{base}/exams/{study.exam.exam_no}", exam_record(study)),
        ):
            answer = send(hospital, "PUT", path, json=record)
            assert answer.status_code == 200, answer.text
        assert stack.send_to_edge(edge, study.instances()).ok
    held = {}
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        for edge, study in sent.items():
            orthanc_study = wait_for_instances(central, study.exam.study_instance_uid, 1, 120)
            [instance] = central.get(f"/studies/{orthanc_study}/instances").json()
            # The edge reports the arrival itself (test_indexer.py); reported here too, as the
            # edge would, so the matrix does not wait on the edge's record queue.
            hospital = principals[f"gw_{edge.lower()}"]
            answer = send(
                hospital,
                "POST",
                f"/api/v1/institutions/{study.exam.institution_code}/studies",
                json=arrival(study),
            )
            assert answer.status_code == 200, answer.text
            held[edge] = Held(
                study, orthanc_study, instance["ID"], master_index_of(principals["admin"], study)
            )
    return held


def master_index_of(admin: httpx.Client, study: SampleStudy) -> str:
    path = f"/api/v1/institutions/{study.exam.institution_code}/exams/{study.exam.exam_no}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exam = send(admin, "GET", path).json()
        if exam["master_index_id"]:
            return str(exam["master_index_id"])
        time.sleep(0.2)
    raise AssertionError(f"{study.exam.exam_no}: no master index ID within 30 s")


def request_for(endpoint: Endpoint, world: dict[str, Held], allowed: bool) -> dict[str, Any]:
    """httpx arguments of a cell. STOW-RS carries a real instance (one central already holds:
    storing it again changes nothing) only where the cell expects it to be allowed, and an
    invalid body where it expects 403: the refusal must come before the body is read. An
    upload to central's REST API always carries the real instance: whether a hospital may
    add it depends on the study the file itself names."""
    a, b = world["A"], world["B"]
    kwargs: dict[str, Any] = {"headers": dict(endpoint.headers)}
    kind = endpoint.body
    if kind in ("stow a", "stow b"):
        study = (a if kind == "stow a" else b).study
        kwargs = stow_body(dicom_bytes(study) if allowed else b"not DICOM")
    elif kind == "dicom a":
        kwargs = {"content": dicom_bytes(a.study), "headers": {"Content-Type": "application/dicom"}}
    elif kind == "uid a":
        kwargs["content"] = a.uid
    elif kind == "uid nul":
        kwargs["content"] = a.uid + "\x00"
    elif kind == "patient a":
        kwargs["json"] = patient_record(a.study)
    elif kind == "arrival a":
        kwargs["json"] = arrival(a.study)
    elif kind == "person a":
        kwargs["json"] = {"national_id": a.study.patient.national_id, "purpose": "复诊对比"}
    elif kind == "break glass":
        kwargs["json"] = {"study_instance_uid": NO_SUCH_STUDY, "reason": "急诊 emergency review"}
    return kwargs


def cells() -> list[Any]:
    """One pytest case per cell; the cells in DEFECTS are strict xfails."""
    params = []
    for name, row in EXPECTED.items():
        for principal, expected in zip(PRINCIPALS, row, strict=True):
            defect = DEFECTS.get((name, principal))
            marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
            params.append(
                pytest.param(name, principal, expected, id=f"{name} | {principal}", marks=marks)
            )
    return params


def test_the_table_covers_every_endpoint_once() -> None:
    assert list(EXPECTED) == list(ENDPOINTS)
    assert all(len(row) == len(PRINCIPALS) for row in EXPECTED.values())
    assert {name for name, _ in DEFECTS} <= set(ENDPOINTS)


def test_no_route_decides_on_its_own() -> None:
    """Every cell above is decided by indexer/services/access.py: no route of
    indexer/api/routes compares institutions, owners or roles itself (what counts as
    deciding: tests/unit/test_access_routes.py)."""
    assert route_decisions() == []


@pytest.mark.parametrize(("name", "principal", "expected"), cells())
def test_access(
    name: str,
    principal: str,
    expected: Expected,
    world: dict[str, Held],
    principals: dict[str, httpx.Client],
) -> None:
    endpoint = ENDPOINTS[name]
    a, b = world["A"], world["B"]
    path = endpoint.path.format(a=a, b=b)
    marker = endpoint.marker.format(a=a, b=b) if endpoint.marker else None
    allowed = expected in (200, SHOWN, HIDDEN)
    answer = send(
        principals[principal], endpoint.method, path, **request_for(endpoint, world, allowed)
    )
    assert verdict(answer, expected, marker), (
        f"{principal} {endpoint.method} {path}: expected {expected}, got "
        f"{answer.status_code} {answer.text[:300]!r}"
    )


# A radiologist of A holds a UID the gateway lets through (their own study). Requests that
# name it to the gateway's check but reach another study at central must get nothing of B's.
EVASIONS: dict[str, tuple[str, str | None]] = {
    "WADO metadata through a dot-dot segment": (
        "/dicom-web/studies/{a.uid}/%2e%2e/{b.uid}/metadata",
        "{b.uid}",
    ),
    "WADO frame through a dot-dot segment": (
        "/dicom-web/studies/{a.uid}/%2e%2e/{b.uid}/series/{b.series}/instances/{b.sop}/frames/1",
        None,
    ),
    "QIDO series with a second study filter by tag": (
        "/dicom-web/series?StudyInstanceUID={a.uid}&0020000D={b.uid}",
        "{b.uid}",
    ),
    "QIDO studies/ with an empty second StudyInstanceUID": (
        "/dicom-web/studies/?StudyInstanceUID={a.uid}&StudyInstanceUID=",
        "{b.uid}",
    ),
    "QIDO instances with an empty second StudyInstanceUID": (
        "/dicom-web/instances?StudyInstanceUID={a.uid}&StudyInstanceUID=",
        "{b.uid}",
    ),
    "WADO metadata through an upper-case encoded dot-dot": (
        "/dicom-web/studies/{a.uid}/%2E%2E/{b.uid}/metadata",
        "{b.uid}",
    ),
    "WADO metadata through a plain dot-dot": (
        "/dicom-web/studies/{a.uid}/../{b.uid}/metadata",
        "{b.uid}",
    ),
    "QIDO series of A's path filtered to B": (
        "/dicom-web/studies/{a.uid}/series?StudyInstanceUID={b.uid}",
        "{b.uid}",
    ),
    "QIDO series of A's path filtered to B by tag": (
        "/dicom-web/studies/{a.uid}/series?0020000d={b.uid}",
        "{b.uid}",
    ),
}


@pytest.mark.parametrize("evasion", list(EVASIONS))
def test_a_readable_uid_opens_no_other_study(
    evasion: str, world: dict[str, Held], principals: dict[str, httpx.Client]
) -> None:
    a, b = world["A"], world["B"]
    template, marker_template = EVASIONS[evasion]
    path = template.format(a=a, b=b)
    marker = marker_template.format(a=a, b=b) if marker_template else None
    headers = FRAMES if "frames" in path else DICOM_JSON
    answer = send(principals["rad_a"], "GET", path, headers=headers)
    leaked = answer.status_code == 200 and (marker is None or marker in answer.text)
    assert not leaked, f"rad_a GET {path}: {answer.status_code}, B's study in the answer"
