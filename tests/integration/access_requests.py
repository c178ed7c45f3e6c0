"""What the access matrix (test_access_matrix.py) sends and how it reads an answer: the
studies it holds, DICOM and STOW-RS bodies, one request with its retry, a cell's verdict."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydicom.filewriter import dcmwrite

from deploy.samples.studies import SampleStudy

SHOWN = "shown"  # 200, and the cell's study is in the answer
HIDDEN = "hidden"  # 200, and the cell's study is not in the answer
WITHHELD = "withheld"  # 403, or 200 without the cell's study: nothing of it either way
Expected = int | str


@dataclass(frozen=True)
class Held:
    """One study of the matrix: what the edges sent, and where central and the indexer keep it."""

    study: SampleStudy
    orthanc_study: str
    orthanc_instance: str
    master_index_id: str

    @property
    def uid(self) -> str:
        return self.study.exam.study_instance_uid

    @property
    def series(self) -> str:
        return self.study.exam.series_instance_uid

    @property
    def sop(self) -> str:
        return self.study.sop_instance_uids[0]

    @property
    def mrn(self) -> str:
        return self.study.patient.mrn

    @property
    def exam_no(self) -> str:
        return self.study.exam.exam_no


def arrival(study: SampleStudy) -> dict[str, Any]:
    return {
        "study_instance_uid": study.exam.study_instance_uid,
        "accession_number": study.exam.exam_no,
        "modalities": [study.exam.modality],
        "series_count": 1,
        "instance_count": 1,
        "complete": True,
    }


def dicom_bytes(study: SampleStudy) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, next(study.instances()), enforce_file_format=True)
    return buffer.getvalue()


def stow_body(part: bytes) -> dict[str, Any]:
    boundary = "access-matrix"
    return {
        "content": (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part
            + f"\r\n--{boundary}--\r\n".encode()
        ),
        "headers": {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    }


def send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; a 502 (the gateway found the indexer restarting) is no decision: retried."""
    deadline = time.monotonic() + 30
    answer = client.request(method, path, **kwargs)
    while answer.status_code == 502 and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = client.request(method, path, **kwargs)
    return answer


def verdict(answer: httpx.Response, expected: Expected, marker: str | None) -> bool:
    if expected == SHOWN:
        return answer.status_code == 200 and marker is not None and marker in answer.text
    if expected == HIDDEN:
        return answer.status_code == 200 and marker is not None and marker not in answer.text
    if expected == WITHHELD:
        if answer.status_code == 403:
            return True
        return answer.status_code == 200 and marker is not None and marker not in answer.text
    return answer.status_code == expected
