"""No log of the stack holds a patient's name, MRN (PatientID), national ID or phone.

The last test of the session (conftest runs `runs_last` tests after every other one, e2e
included) reads every log of the stack and looks for the personal data of every sample
patient the suite stored: their MRNs come from the archive and the indexer, and the
deterministic generator (deploy/samples) gives back each one's name, national ID and phone.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import psycopg
import pytest
from pydicom.dataset import Dataset

from deploy.samples import modality
from deploy.samples.people import Patient
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient

from ..support.eventually import eventually

MRN = re.compile(r"^MRN(\d{8})$")
PROBE_SEED = 1818


def _logs(state: Path) -> list[Path]:
    """Every log file of the stack: var/.../log/* and the gateway's nginx logs."""
    files = [p for p in (state / "log").iterdir() if p.is_file()]
    return files + [p for p in (state / "gateway" / "logs").glob("*") if p.is_file()]


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_failed_store_at_the_edge_logs_no_patient_id(stack: StackClient) -> None:
    """Orthanc's core logs "Store has failed ... (PatientID=...)" at ERROR
    level when a store lacks a UID; the edge's log must not keep the value."""
    log = Path(stack["STACK_DIR"]) / "log" / "edge-a.log"
    offset = log.stat().st_size
    study = make_study(PROBE_SEED, "CT", instances=1, institution_code=stack["EDGE_A_INSTITUTION"])
    ds = next(study.instances())
    del ds.SeriesInstanceUID
    with stack.orthanc("EDGE_A") as edge:
        response = edge.post("/instances", content=_encode(ds))
    assert 400 <= response.status_code < 500
    try:
        stack.send_to_edge("A", [ds])
    except (modality.AssociationRefused, ValueError, AttributeError):
        pass  # refused before Orthanc's store: nothing more to see

    def logged() -> str | None:
        with log.open("rb") as f:
            f.seek(offset)
            tail = f.read().decode("utf-8", errors="replace")
        return tail if "Store has failed" in tail else None

    tail = eventually(logged, what="Orthanc's log line of the failed store", interval=0.5)
    assert study.patient.mrn not in tail
    assert "PatientID=" not in tail.replace("PatientID=(redacted)", "")


def _stored_mrns(stack: StackClient) -> set[str]:
    mrns: set[str] = set()
    for which in ("CENTRAL_ORTHANC", "EDGE_A", "EDGE_B"):
        with stack.orthanc(which) as orthanc:
            for patient in orthanc.get("/patients", params={"expand": ""}).json():
                mrns.add(patient["MainDicomTags"].get("PatientID", ""))
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    with psycopg.connect(
        host="127.0.0.1",
        port=int(stack["POSTGRES_PORT"]),
        user="indexer",
        password=secrets["db_indexer"],
        dbname="indexer",
        connect_timeout=5,
    ) as conn:
        mrns |= {row[0] for row in conn.execute("SELECT mrn FROM patients")}
    return mrns


def _sample_patients(mrns: set[str]) -> list[Patient]:
    """The generator's patients behind the MRNs (for the default day and for today, the two
    days the suite generates with)."""
    patients = []
    for mrn in mrns:
        match = MRN.match(mrn)
        if not match:
            continue
        for day in (None, dt.date.today()):
            patients.append(make_study(int(match.group(1)), "CT", instances=1, today=day).patient)
    return patients


def _needles(patient: Patient) -> dict[str, str]:
    family, _, given = patient.name_pinyin.partition("^")
    return {
        "MRN": patient.mrn,
        "name (pinyin)": patient.name_pinyin,
        "name (pinyin, spaced)": f"{family} {given}",
        "name (hanzi)": patient.name_hanzi,
        "national ID": patient.national_id,
        "phone": patient.phone,
    }


@pytest.mark.runs_last
def test_no_log_holds_the_sample_patients_personal_data(stack: StackClient) -> None:
    mrns = _stored_mrns(stack)
    mrns.add(make_study(PROBE_SEED, "CT", instances=1).patient.mrn)
    patients = _sample_patients(mrns)
    assert patients, "the suite stored no sample patient: nothing to look for"
    needles = {}
    for patient in patients:
        for what, value in _needles(patient).items():
            needles[value] = f"{what} of {patient.mrn}"
    found: dict[str, list[str]] = {}
    for log in _logs(Path(stack["STACK_DIR"])):
        text = log.read_text(encoding="utf-8", errors="replace")
        hits = sorted({label for value, label in needles.items() if value in text})
        hits += ["an MRN"] if re.search(r"MRN\d{8}", text) else []
        if hits:
            found[log.name] = hits
    assert found == {}
