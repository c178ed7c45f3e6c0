"""The log filter masks what Orthanc's core and nginx's error log would write in clear."""

from __future__ import annotations

import pytest

from deploy.stack.logredact import MASK, redact


@pytest.mark.parametrize(
    ("line", "secret", "kept"),
    [
        # Orthanc's failed-store line; a value may hold a comma
        ("missing tags (PatientID=ZHANG, SAN, StudyInstanceUID=1.2.3)", "ZHANG", "1.2.3"),
        ("missing tags (PatientName=WANG^WU)", "WANG", "missing tags"),
        ('{"PatientBirthDate": "19900307", "Modality": "CT"}', "19900307", '"CT"'),
        # nginx's error log: request line with a search, upstream URL, patient route, link
        (
            'request: "GET /dicom-web/studies?PatientName=LI*&limit=5 HTTP/1.1", host: "g"',
            "LI*",
            'HTTP/1.1", host: "g"',
        ),
        ('upstream: "http://127.0.0.1:5/_authz?00100020=MRN7"', "MRN7", "http://127.0.0.1:5"),
        (
            'request: "PUT /api/v1/institutions/H0001/patients/MRN0042 HTTP/1.1"',
            "MRN0042",
            "/patients/(mrn) HTTP/1.1",
        ),
        ('request: "GET /s/Zx81kQ_secret HTTP/1.1"', "Zx81kQ_secret", "/s/(secret)"),
    ],
)
def test_personal_values_and_secrets_are_masked(line: str, secret: str, kept: str) -> None:
    masked = redact(line)
    assert secret not in masked
    assert kept in masked


def test_a_line_without_personal_data_is_unchanged() -> None:
    line = "W1203 07:10:47 MAIN main.cpp:934] Loading plugin(s) from: /usr/share/orthanc\n"
    assert redact(line) == line
    assert MASK not in redact("StudyInstanceUID=1.2.840.1, SOPInstanceUID=1.2.3")
