"""HL7 messages to the REST request models: the same records, the same rules (no
database). A field's error names its HL7 location and the rule, never the value."""

from __future__ import annotations

import pytest

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import make_study
from indexer.hl7 import compose, parse
from indexer.hl7.ack import ack
from indexer.hl7.errors import FieldErrors, Hl7Error, Rejected
from indexer.hl7.listener import institution_of, unframe
from indexer.hl7.message import Message
from indexer.schemas import ExamIn, PatientIn, ReportIn

STUDY = make_study(4242, "CT", instances=1)


@pytest.mark.parametrize("charset", ["UNICODE UTF-8", "GB 18030-2000", "GB18030"])
def test_a_registration_is_the_rest_record(charset: str) -> None:
    record = patient_record(STUDY)
    text = compose.adt(STUDY.patient.mrn, record, "c1", "H0001", charset=charset)
    codec = "utf-8" if charset.startswith("UNICODE") else "gb18030"
    mrn, patient = parse.patient(Message(text.encode(codec)))
    assert mrn == STUDY.patient.mrn
    assert patient == PatientIn.model_validate(record)
    assert patient.name == STUDY.patient.name_hanzi


@pytest.mark.parametrize("kind", ["ORM^O01", "OMI^O23"])
def test_an_order_is_the_rest_exam(kind: str) -> None:
    record = exam_record(STUDY, with_study_uid=True)
    text = compose.order(STUDY.exam.exam_no, record, "c2", "H0001", kind=kind)
    number, exam = parse.exam(Message(text.encode()), "+0800")
    assert number == STUDY.exam.exam_no and exam == ExamIn.model_validate(record)


def test_a_final_result_is_the_rest_report_and_a_preliminary_one_is_refused() -> None:
    record = report_record(STUDY)
    text = compose.result(STUDY.exam.exam_no, record, "c3", "H0001")
    assert parse.report(Message(text.encode()), "+0800")[1] == ReportIn.model_validate(record)
    preliminary = compose.result(STUDY.exam.exam_no, record, "c4", "H0001", status="P")
    with pytest.raises(Hl7Error) as refused:
        parse.report(Message(preliminary.encode()), "+0800")
    assert refused.value.location == "OBR^1^25" and "final" in refused.value.rule


def test_field_errors_name_location_and_rule_not_the_value() -> None:
    record = patient_record(STUDY) | {"national_id": "110101199003070000", "phone": "abc"}
    text = compose.adt(STUDY.patient.mrn, record, "c5", "H0001")
    with pytest.raises(FieldErrors) as refused:
        parse.patient(Message(text.encode()))
    where = {e.location: e.rule for e in refused.value.errors}
    assert set(where) == {"PID^1^3", "PID^1^13"}
    assert "GB 11643" in where["PID^1^3"]
    assert not any("110101199003070000" in rule or "abc" in rule for rule in where.values())


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [
        ("|2.5|", "|2.9|", "MSH^1^12"),
        ("|P|", "|T|", "MSH^1^11"),
        ("UNICODE UTF-8", "KOI8-R", "MSH^1^18"),
    ],
)
def test_unsupported_headers_are_rejected(old: str, new: str, location: str) -> None:
    text = compose.adt(STUDY.patient.mrn, patient_record(STUDY), "c6", "H0001")
    with pytest.raises(Rejected) as refused:
        Message(text.replace(old, new, 1).encode())
    assert refused.value.location == location and refused.value.ack_code == "AR"


def test_bytes_invalid_in_the_charset_are_rejected() -> None:
    text = compose.adt(STUDY.patient.mrn, patient_record(STUDY), "c7", "H0001")
    with pytest.raises(Rejected):
        Message(text.encode("gb18030"))  # says UTF-8, is GB 18030


def test_escapes_are_undone() -> None:
    record = report_record(STUDY) | {"findings": "a|b^c&d~e\\f"}
    text = compose.result(STUDY.exam.exam_no, record, "c8", "H0001")
    assert parse.report(Message(text.encode()), "+0800")[1].findings == "a|b^c&d~e\\f"


def test_the_ack_carries_location_code_and_rule() -> None:
    errors = [Hl7Error("PID^1^3", "102", "national_id: not a valid GB 11643 number")]
    reply = ack("AE", control_id="X1", trigger="A01", charset="UNICODE UTF-8", errors=errors)
    code, errs = compose.ack_code(reply.encode())
    assert code == "AE" and errs == [
        "ERR||PID^1^3|102^Data type error^HL70357|E||||national_id: not a valid GB 11643 number"
    ]
    assert "|X1|" in reply.split("\r")[1] + "|"


def test_framing_and_the_sender_certificate() -> None:
    assert unframe(b"\x0bMSH|x\x1c\x0d") == b"MSH|x"
    assert unframe(b"\r\n\x0bMSH|x\x1c\x0d") == b"MSH|x"
    assert unframe(b"MSH|x\x1c\x0d") is None
    assert unframe(b"\x0bMSH\x0bMSH|x\x1c\x0d") is None
    cert = {"subject": ((("commonName", "hl7-sender-H0001"),),)}
    assert institution_of(cert) == "H0001"
    assert institution_of({"subject": ((("commonName", "localhost"),),)}) is None
    assert institution_of({"subject": ((("commonName", "hl7-sender-h1"),),)}) is None
    assert institution_of(None) is None
