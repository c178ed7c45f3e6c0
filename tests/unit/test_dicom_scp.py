"""The edge's C-FIND/C-MOVE SCP (#18, 4): the gate per calling AE, before any database
access; answers built as Orthanc's core builds them, and an audit event for every operation
with the calling AE, the level, the query, the number of answers and the outcome (a failure
and a refusal too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgcloud.dicom_audit import AuditOutbox
from imgcloud.dicom_scp import DicomRefused, DicomScp, asked_keys, modality_entries

CONFIG: dict[str, Any] = {
    "DicomAet": "EDGE_H0001",
    "DicomModalities": {
        "DEMO_CT": {"AET": "DEMO_CT", "Host": "10.0.0.7", "Port": 104},
        "pacs": {"AET": "HOSP_PACS", "Host": "10.0.0.8", "Port": 11112},
    },
}
STUDY = {
    "ID": "st1",
    "Type": "Study",
    "MainDicomTags": {"StudyInstanceUID": "1.2.3", "AccessionNumber": "A1"},
    "PatientMainDicomTags": {"PatientName": "WANG^XIAOMING", "PatientID": "MRN1"},
}
SERIES = [
    {"MainDicomTags": {"Modality": "CT"}, "Instances": ["i1", "i2"]},
    {"MainDicomTags": {"Modality": "SR"}, "Instances": ["i3"]},
]


def local_orthanc(found: list[dict[str, Any]], seen: list[dict[str, Any]]) -> Any:
    """This edge's REST API as the SCP uses it: /tools/find and the resources' routes."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tools/find":
            seen.append(json.loads(request.content))
            return httpx.Response(200, json=found)
        if request.url.path == "/studies/st1/series":
            return httpx.Response(200, json=SERIES)
        if request.url.path == "/studies/st1/instances":
            return httpx.Response(200, json=[{}, {}, {}])
        return httpx.Response(404, json={})

    class Local:
        def __init__(self) -> None:
            transport = httpx.MockTransport(handler)
            self.client = httpx.Client(base_url="http://edge", transport=transport)
            self.stored: list[tuple[str, str]] = []

        def find_study(self, uid: str) -> str | None:
            return "st1" if uid == "1.2.3" else None

        def c_store(self, modality: str, resource: str) -> None:
            self.stored.append((modality, resource))

    return Local()


def scp_with(tmp_path: Path, found: list[dict[str, Any]], seen: list | None = None) -> DicomScp:
    box = AuditOutbox(tmp_path / "audit.sqlite", lambda d, _n: d, lambda d, _n: d)
    local = local_orthanc(found, [] if seen is None else seen)
    return DicomScp(CONFIG, local, _no_fetch, box, query_retrieve_aets={"HOSP_PACS"})


def ignore_answer(answer: dict[str, str]) -> None:
    """A C-FIND answer callback for tests that look only at the refusal."""


def _no_fetch(request: dict[str, str]) -> dict[str, Any]:
    raise RuntimeError("not in the cloud")


PATIENT_NAME = (0x0010, 0x0010)
IDENTIFIER = [
    (0x0008, 0x0052, "STUDY"),
    (0x0010, 0x0010, "WANG*"),
    (0x0010, 0x0020, ""),
    (0x0020, 0x000D, ""),
    (0x0008, 0x0061, ""),
    (0x0020, 0x1208, ""),
    (0x0008, 0x1110, ""),  # ReferencedStudySequence: not in the index, not answered
]


def test_modalities_short_and_long_form() -> None:
    assert modality_entries(CONFIG)["HOSP_PACS"] == ("pacs", "10.0.0.8")
    short = {"DicomModalities": {"ct": ["CT1", "10.0.0.9", 104]}}
    assert modality_entries(short) == {"CT1": ("ct", "10.0.0.9")}


def test_the_identifier_gives_the_level_and_the_keys() -> None:
    level, query = asked_keys(IDENTIFIER)
    assert level == "STUDY"
    assert query == {
        "PatientName": "WANG*",
        "PatientID": "",
        "StudyInstanceUID": "",
        "ModalitiesInStudy": "",
        "NumberOfStudyRelatedInstances": "",
    }


def test_a_c_find_is_answered_from_the_index_and_audited(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    scp = scp_with(tmp_path, [STUDY], seen)
    answers: list[dict[str, str]] = []
    assert scp.find("HOSP_PACS", "EDGE_H0001", IDENTIFIER, answers.append, lambda: None) == 1
    # only real constraints reach the index: universal keys and counters do not
    assert seen == [{"Level": "Study", "Query": {"PatientName": "WANG*"}, "Expand": True}]
    assert answers == [
        {
            "QueryRetrieveLevel": "STUDY",
            "PatientName": "WANG^XIAOMING",
            "PatientID": "MRN1",
            "StudyInstanceUID": "1.2.3",
            "ModalitiesInStudy": "CT\\SR",
            "NumberOfStudyRelatedInstances": "3",
            "RetrieveAETitle": "EDGE_H0001",
            "SpecificCharacterSet": "ISO_IR 192",
        }
    ]
    (audited,) = scp.outbox.pending()
    assert audited["action"] == "dicom.c-find" and audited["outcome"] == "ok"
    assert (audited["calling_ae"], audited["called_ae"]) == ("HOSP_PACS", "EDGE_H0001")
    assert audited["source"] == "10.0.0.8"  # the host Orthanc checked for this AE
    assert audited["level"] == "STUDY" and audited["answers"] == 1
    assert audited["query"]["PatientName"] == "WANG*"


def test_a_c_find_that_fails_is_audited_as_failed(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [STUDY])

    def broken(answer: dict[str, str]) -> None:
        raise RuntimeError("cannot encode")

    with pytest.raises(RuntimeError):
        scp.find("HOSP_PACS", "EDGE_H0001", IDENTIFIER, broken, lambda: None)
    (audited,) = scp.outbox.pending()
    assert (audited["outcome"], audited["answers"]) == ("failed", 0)


def test_a_c_find_at_an_unknown_level_is_refused_and_audited(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [STUDY])
    with pytest.raises(DicomRefused):
        scp.find("HOSP_PACS", "E", [(0x0008, 0x0052, "WORKLIST")], ignore_answer, lambda: None)
    assert scp.outbox.pending()[0]["outcome"] == "refused"


def test_more_answers_than_the_limit_are_cut_and_marked_incomplete(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [STUDY, STUDY | {"ID": "st2"}])
    scp.finder.limit = 1
    answers: list[dict[str, str]] = []
    marked: list[bool] = []
    identifier = [(0x0008, 0x0052, "STUDY"), (0x0020, 0x000D, "")]
    scp.find("HOSP_PACS", "E", identifier, answers.append, lambda: marked.append(True))
    assert len(answers) == 1 and marked == [True]


def test_a_c_move_is_served_and_audited_with_the_instances_sent(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [])
    request = {
        "Level": "STUDY",
        "StudyInstanceUID": "1.2.3",
        "PatientID": "",
        "OriginatorAET": "HOSP_PACS",
        "SourceAET": "EDGE_H0001",
        "TargetAET": "HOSP_PACS",
    }
    assert scp.move(request) == 3
    assert scp.local.stored == [("pacs", "st1")]
    (audited,) = scp.outbox.pending()
    assert audited["action"] == "dicom.c-move" and audited["answers"] == 3
    assert audited["query"] == {"StudyInstanceUID": "1.2.3", "MoveDestination": "HOSP_PACS"}


@pytest.mark.parametrize(
    ("change", "outcome"),
    [({"TargetAET": "ELSEWHERE"}, "refused"), ({"StudyInstanceUID": "9.9"}, "failed")],
)
def test_a_c_move_refused_or_failed_is_audited(
    tmp_path: Path, change: dict[str, str], outcome: str
) -> None:
    scp = scp_with(tmp_path, [])
    request = {"Level": "STUDY", "StudyInstanceUID": "1.2.3", "TargetAET": "HOSP_PACS"}
    with pytest.raises((DicomRefused, RuntimeError)):
        scp.move(request | change | {"OriginatorAET": "HOSP_PACS"})
    assert scp.outbox.pending()[0]["outcome"] == outcome
    assert scp.local.stored == []


def test_a_host_name_is_no_source_address(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [])
    scp.modalities["HOSP_PACS"] = ("pacs", "pacs.hospital.example")
    scp.find("HOSP_PACS", "E", [(0x0008, 0x0052, "STUDY")], ignore_answer, lambda: None)
    assert scp.outbox.pending()[0]["source"] == ""


def test_an_ae_not_allowed_to_query_is_refused_before_the_index_and_audited(
    tmp_path: Path,
) -> None:
    """The CT modality's C-FIND reaches the plugin (AllowFind true): refused here, audited."""
    seen: list[dict[str, Any]] = []
    scp = scp_with(tmp_path, [STUDY], seen)
    answers: list[dict[str, str]] = []
    with pytest.raises(DicomRefused, match="C-FIND"):
        scp.find("DEMO_CT", "EDGE_H0001", IDENTIFIER, answers.append, lambda: None)
    assert answers == [] and seen == []  # no dataset, no database access
    (audited,) = scp.outbox.pending()
    assert (audited["action"], audited["outcome"], audited["answers"]) == (
        "dicom.c-find",
        "refused",
        0,
    )
    assert (audited["calling_ae"], audited["source"]) == ("DEMO_CT", "10.0.0.7")
    assert audited["query"]["PatientName"] == "WANG*"


def test_an_ae_not_allowed_to_retrieve_is_refused_and_audited(tmp_path: Path) -> None:
    scp = scp_with(tmp_path, [STUDY])
    request = {"Level": "STUDY", "StudyInstanceUID": "1.2.3", "TargetAET": "HOSP_PACS"}
    with pytest.raises(DicomRefused, match="C-MOVE"):
        scp.move(request | {"OriginatorAET": "DEMO_CT", "SourceAET": "EDGE_H0001"})
    assert scp.local.stored == []
    (audited,) = scp.outbox.pending()
    assert (audited["action"], audited["outcome"]) == ("dicom.c-move", "refused")
    assert audited["calling_ae"] == "DEMO_CT"


def test_without_a_list_nobody_may_query(tmp_path: Path) -> None:
    box = AuditOutbox(tmp_path / "audit.sqlite", lambda d, _n: d, lambda d, _n: d)
    scp = DicomScp(CONFIG, local_orthanc([STUDY], []), _no_fetch, box)
    with pytest.raises(DicomRefused):
        scp.find("HOSP_PACS", "E", IDENTIFIER, ignore_answer, lambda: None)
    assert box.pending()[0]["outcome"] == "refused"
