"""Who may query and retrieve at an edge (#18, 4), with real DICOM clients (pynetdicom):
the CT modality's AE title may only C-STORE (its C-FIND, C-GET and C-MOVE are refused and
return no patient data, and its refused C-FIND and C-MOVE reach the indexer's audit trail
as refused, 403, with its AE title); the hospital PACS may C-FIND as before, and each of
its C-FINDs reaches the audit trail with the calling AE and the number of answers, without
the edge logging the personal values it was asked for."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from deploy.samples.pacs import HospitalPacs
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, wait_for_instances

from ..support.eventually import eventually
from .fresh import fresh_seed
from .test_edge_retrieval import pacs_for

SUCCESS, PENDING = 0x0000, 0xFF00
STORAGE_CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage, for the C-GET's sub-operations


@pytest.fixture(scope="module")
def pacs_a(stack: StackClient) -> Iterator[HospitalPacs]:
    with pacs_for(stack, "A") as pacs:
        yield pacs


@pytest.fixture(scope="module")
def study(stack: StackClient) -> SampleStudy:
    """A fresh CT study on edge A, sent by the modality as usual (C-STORE stays allowed)."""
    sample = make_study(fresh_seed(), "CT", instances=2, institution_code="H0001")
    result = stack.send_to_edge("A", sample.instances())
    assert result.ok and result.sent == 2, result.failed
    with stack.orthanc("EDGE_A") as edge:
        wait_for_instances(edge, sample.exam.study_instance_uid, 2, timeout_s=30)
    return sample


class Operation:
    """One association as `calling_aet`, one operation; what came back."""

    def __init__(self, stack: StackClient, calling_aet: str) -> None:
        self.ae = AE(ae_title=calling_aet)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        # the PACS's AE title over mutual TLS (the only way it is let in), the others plain
        self.port, self.tls = stack.edge_dicom("A", calling_aet)
        self.called = stack["EDGE_A_AET"]
        self.statuses: list[int | None] = []
        self.identifiers: list[Dataset] = []
        self.stored: list[Dataset] = []

    def _collect(self, replies: Any) -> Operation:
        for status, identifier in replies:
            self.statuses.append(int(status.Status) if status and "Status" in status else None)
            if identifier is not None:
                self.identifiers.append(identifier)
        return self

    def _on_store(self, event: Any) -> int:
        self.stored.append(event.dataset)
        return SUCCESS

    def run(self, kind: str, query: Dataset, destination: str = "") -> Operation:
        models = {
            "find": StudyRootQueryRetrieveInformationModelFind,
            "patient-find": PatientRootQueryRetrieveInformationModelFind,
            "get": StudyRootQueryRetrieveInformationModelGet,
            "move": StudyRootQueryRetrieveInformationModelMove,
        }
        model = models[kind]
        self.ae.add_requested_context(model)
        roles: list[Any] = []  # pynetdicom's list of its negotiation items (invariant)
        if kind == "get":
            self.ae.add_requested_context(STORAGE_CT)
            roles = [build_role(STORAGE_CT, scp_role=True)]
        assoc = self.ae.associate(
            "127.0.0.1",
            self.port,
            ae_title=self.called,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            tls_args=(self.tls, "127.0.0.1") if self.tls else None,
        )
        assert assoc.is_established, f"{self.called} refused the association"
        try:
            if kind.endswith("find"):
                self._collect(assoc.send_c_find(query, model))
            elif kind == "get":
                self._collect(assoc.send_c_get(query, model))
            else:
                self._collect(assoc.send_c_move(query, destination, model))
        finally:
            if assoc.is_established:
                assoc.release()
        return self


def study_query(study: SampleStudy, **keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study.exam.study_instance_uid
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def all_patients() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientName = "*"
    query.PatientID = ""
    query.PatientBirthDate = ""
    return query


def audit_rows(stack: StackClient, action: str, since: str, want: Any) -> list[dict[str, Any]]:
    """The audit rows of `action` recorded since `since` that `want` keeps, once there are."""
    auditor = stack.password_token(stack["DEMO_AUDITOR_USER"], stack["DEMO_AUDITOR_PASSWORD"])

    def found() -> list[dict[str, Any]] | None:
        with stack.gateway(auditor["access_token"]) as api:
            answer = api.get("/api/v1/audit", params={"action": action, "since": since})
        assert answer.status_code == 200, answer.text
        rows = [e for e in answer.json()["events"] if want(e)]
        return rows or None

    return eventually(found, what=f"{action} in the indexer's audit trail", timeout=60)


@pytest.mark.parametrize("kind", ["find", "patient-find", "get", "move"])
def test_the_modality_may_not_query_or_retrieve(
    stack: StackClient, study: SampleStudy, pacs_a: HospitalPacs, kind: str
) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    if kind == "patient-find":
        query = all_patients()
    else:
        query = study_query(study, PatientName="", PatientID="", PatientBirthDate="")
    done = Operation(stack, "DEMO_CT").run(kind, query, destination=stack["EDGE_A_PACS_AET"])
    assert SUCCESS not in done.statuses and PENDING not in done.statuses, done.statuses
    assert done.stored == []
    # a failed C-MOVE may carry the (empty) list of failed instances, nothing else
    carried = {e.keyword for d in done.identifiers for e in d}
    assert carried <= ({"FailedSOPInstanceUIDList"} if kind == "move" else set()), carried
    assert study.exam.study_instance_uid not in {str(d.StudyInstanceUID) for d in pacs_a.received}
    if kind == "get":
        return  # Orthanc's core refuses C-GET (AllowGet false) with no plugin hook to audit it
    action = "dicom.c-move" if kind == "move" else "dicom.c-find"
    resource = f"study:{study.exam.study_instance_uid}"
    if kind == "patient-find":
        resource = "dicom:PATIENT"
    (row,) = audit_rows(
        stack,
        action,
        since,
        lambda e: e.get("calling_ae") == "DEMO_CT" and e.get("resource") == resource,
    )
    assert row["outcome"] == 403 and row["answers"] == 0, row
    assert row["called_ae"] == stack["EDGE_A_AET"]
    assert study.patient.mrn not in str(row)  # pseudonymised by the indexer


def test_not_even_the_pacs_may_c_get(stack: StackClient, study: SampleStudy) -> None:
    """C-GET cannot be audited at the edge (Orthanc gives plugins no hook): nobody has it."""
    done = Operation(stack, stack["EDGE_A_PACS_AET"]).run("get", study_query(study))
    assert SUCCESS not in done.statuses and PENDING not in done.statuses, done.statuses
    assert done.stored == []


def test_the_pacs_queries_as_before_and_each_query_is_audited(
    stack: StackClient, study: SampleStudy
) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    patient_id = study.patient.mrn
    done = Operation(stack, stack["EDGE_A_PACS_AET"]).run(
        "find",
        study_query(
            study,
            PatientID=patient_id,
            PatientName="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedInstances="",
        ),
    )
    assert done.statuses[-1] == SUCCESS
    (answer,) = done.identifiers
    assert str(answer.StudyInstanceUID) == study.exam.study_instance_uid
    assert str(answer.PatientID) == patient_id
    assert str(answer.ModalitiesInStudy) == "CT"
    assert int(answer.NumberOfStudyRelatedInstances) == 2
    # the same query by a patient ID nobody has: no answers, audited as such
    Operation(stack, stack["EDGE_A_PACS_AET"]).run("find", study_query(study, PatientID="NONE"))

    auditor = stack.password_token(stack["DEMO_AUDITOR_USER"], stack["DEMO_AUDITOR_PASSWORD"])

    def audited() -> list[dict[str, Any]] | None:
        with stack.gateway(auditor["access_token"]) as api:
            answer = api.get("/api/v1/audit", params={"action": "dicom.c-find", "since": since})
        assert answer.status_code == 200, answer.text
        rows = [
            e
            for e in answer.json()["events"]
            if e.get("calling_ae") == stack["EDGE_A_PACS_AET"]
            and study.exam.study_instance_uid in json.dumps(e)
        ]
        return rows if len(rows) >= 2 else None

    rows = eventually(audited, what="the edge's C-FINDs in the indexer's audit trail", timeout=60)
    assert sorted(r["answers"] for r in rows) == [0, 1]
    for row in rows:
        assert row["called_ae"] == stack["EDGE_A_AET"]
        assert patient_id not in str(row)  # pseudonymised by the indexer
    edge_log = Path(stack["STACK_DIR"]) / "log" / "edge-a.log"
    assert patient_id not in edge_log.read_text(errors="replace")
