"""Messages as a RIS sends them, built from the REST intake's own JSON records (the same
dicts a PUT takes): used by the tests (the golden comparison of both intakes), the bench
and the demo. The mapping is parse.py's, inverted. MLLP framing: `frame`."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

from .ack import escape

START, END = b"\x0b", b"\x1c\x0d"


def frame(text: str, codec: str = "utf-8") -> bytes:
    return START + text.encode(codec) + END


def hl7_time(value: str | dt.datetime) -> str:
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    text = when.strftime("%Y%m%d%H%M%S")
    if when.microsecond:
        text += f".{when.microsecond // 100:04d}"
    offset = when.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        text += f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return text


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value), 100_000)


def msh(kind: str, control_id: str, institution: str, charset: str = "UNICODE UTF-8") -> str:
    structure = {"ADT^A40": "ADT_A39", "ORM^O01": "ORM_O01", "OMI^O23": "OMI_O23"}.get(
        kind, kind.replace("^", "_") if not kind.startswith("ADT") else "ADT_A01"
    )
    when = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    return (
        f"MSH|^~\\&|RIS|{institution}|IMGCLOUD|IMGCLOUD|{when}||{kind}^{structure}|"
        f"{_e(control_id)}|P|2.5|||||CHN|{charset}"
    )


def pid(mrn: str, patient: dict[str, Any] | None = None, institution: str = "") -> str:
    p = patient or {}
    ids = f"{_e(mrn)}^^^{institution}^MR"
    if p.get("national_id"):
        ids += f"~{_e(p['national_id'])}^^^CHN^NNCHN"
    name = str(p.get("name") or "")
    family, given = (name[:1], name[1:]) if name and ord(name[0]) > 0x2E7F else (name, "")
    born = str(p.get("birth_date") or "").replace("-", "")
    phone = f"^^^^^^^^^^^{_e(p['phone'])}" if p.get("phone") else ""
    return f"PID|1||{ids}||{_e(family)}^{_e(given)}||{born}|{_e(p.get('sex'))}|||||{phone}"


def adt(
    mrn: str, patient: dict[str, Any], control_id: str, institution: str,
    trigger: str = "A01", charset: str = "UNICODE UTF-8",
) -> str:  # fmt: skip
    segments = [msh(f"ADT^{trigger}", control_id, institution, charset), f"EVN|{trigger}"]
    segments.append(pid(mrn, patient, institution))
    segments.append("PV1|1|O")
    n = 0
    if patient.get("age") is not None:
        n += 1
        segments.append(f"OBX|{n}|NM|30525-0^Age^LN||{_e(patient['age'])}|a|||||F")
    if patient.get("chief_complaint"):
        n += 1
        segments.append(
            f"OBX|{n}|ST|8661-1^Chief complaint^LN||{_e(patient['chief_complaint'])}||||||F"
        )
    return "\r".join(segments) + "\r"


def merge(prior_mrn: str, surviving_mrn: str, control_id: str, institution: str) -> str:
    return "\r".join(
        [msh("ADT^A40", control_id, institution), "EVN|A40",
         pid(surviving_mrn, None, institution), f"MRG|{_e(prior_mrn)}^^^{institution}^MR"]
    ) + "\r"  # fmt: skip


def order(
    exam_no: str, exam: dict[str, Any], control_id: str, institution: str,
    control: str = "NW", kind: str = "ORM^O01", charset: str = "UNICODE UTF-8",
) -> str:  # fmt: skip
    when = hl7_time(exam["exam_datetime"]) if exam.get("exam_datetime") else ""
    obr = ["OBR", "1", _e(exam.get("exam_uid")), _e(exam_no)] + [""] * 41
    obr[4] = f"^{_e(exam.get('exam_type'))}"
    obr[7] = when
    obr[15] = f"^^^{_e(exam.get('body_part'))}" if exam.get("body_part") else ""
    obr[21] = _e(exam.get("device"))
    obr[24] = _e(exam.get("modality"))
    obr[44] = f"^{_e(exam.get('method'))}" if exam.get("method") else ""
    department = exam.get("requesting_department")
    orc = ["ORC", control, _e(exam.get("exam_uid")), _e(exam_no)] + [""] * 14
    orc[17] = f"^{_e(department)}" if department else ""
    segments = [msh(kind, control_id, institution, charset),
                pid(str(exam.get("patient_mrn", "")), None, institution),
                "|".join(orc).rstrip("|"), "|".join(obr).rstrip("|")]  # fmt: skip
    if exam.get("study_instance_uid"):
        if kind == "OMI^O23":
            segments.append(f"IPC|{_e(exam_no)}||{_e(exam['study_instance_uid'])}")
        else:
            segments.append(f"ZDS|{_e(exam['study_instance_uid'])}^^Application^DICOM")
    return "\r".join(segments) + "\r"


def result(
    exam_no: str, report: dict[str, Any], control_id: str, institution: str,
    status: str = "F", charset: str = "UNICODE UTF-8",
) -> str:  # fmt: skip
    obr = ["OBR", "1", _e(report.get("exam_uid")), _e(exam_no)] + [""] * 30
    obr[22] = hl7_time(report["approved_at"]) if report.get("approved_at") else ""
    obr[25] = status
    obr[32] = f"&{_e(report.get('author'))}" if report.get("author") else ""
    obr[33] = f"&{_e(report.get('reviewer'))}" if report.get("reviewer") else ""
    segments = [msh("ORU^R01", control_id, institution, charset),
                pid(str(report.get("patient_mrn") or ""), None, institution),
                f"ORC|RE|{_e(report.get('exam_uid'))}|{_e(exam_no)}",
                "|".join(obr).rstrip("|")]  # fmt: skip
    n = 0
    for code, name, text in (
        ("18782-3", "Findings", report.get("findings")),
        ("19005-8", "Impression", report.get("impression")),
    ):
        for line in str(text or "").split("\n"):
            n += 1
            segments.append(f"OBX|{n}|TX|{code}^{name}^LN||{_e(line)}||||||{status}")
    return "\r".join(segments) + "\r"


def read_reply(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One framed reply from `sock` (its timeout applies), without the framing bytes."""
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole reply")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("reply too large")
    return data.removeprefix(START).removesuffix(END)


def ack_code(reply: bytes, codec: str = "utf-8") -> tuple[str, list[str]]:
    """(MSA-1, ERR segments) of a reply."""
    segments = reply.decode(codec).strip("\r").split("\r")
    msa = next((s for s in segments if s.startswith("MSA|")), "MSA|")
    return msa.split("|")[1], [s for s in segments if s.startswith("ERR|")]
