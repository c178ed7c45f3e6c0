"""HL7 v2 messages to the REST intake's own request models (indexer/schemas.py): the
same pydantic validation, field by field, for both intakes. A field that breaks a rule
is answered AE with one ERR per field: its location (ERR-2, e.g. PID^1^3) and the
schema's rule (ERR-8), never its value.

The mapping (docs: HL7 intake):
- patient (ADT): MRN = PID-3 with identifier type MR (else the first that is not a
  national ID); national ID = PID-3 with type NNCHN or NI; name = PID-5 family + given
  (汉字 without a space); birth date PID-7; sex PID-8; phone PID-13 (XTN-1, else XTN-12);
  age = OBX 30525-0 (LOINC); chief complaint = OBX 8661-1, else PV2-3. Each ADT carries the
  whole registration, as a REST PUT does.
- exam (ORM^O01, OMI^O23): exam no. = IPC-1, else OBR-3, else ORC-3; exam UID = ORC-2,
  else OBR-2 (a UUID); modality = IPC-5, else OBR-24; exam type = OBR-4 text; body part =
  OBR-15 component 4; method = OBR-44 text; device = OBR-21; requesting department =
  ORC-17 text; exam time = OBR-7, else ORC-9; study UID = IPC-3, else ZDS-1.
- report (ORU^R01): exam no. as above; status OBR-25 and each OBX-11: F or C; findings =
  OBX 18782-3 (or GDT), impression = OBX 19005-8 (or IMP), repeated OBX joined by lines;
  author = OBR-32, reviewer = OBR-33; approved at OBR-22.
Times without an offset are in the listener's default zone (+0800).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ..schemas import KEY, BulkExam, BulkPatient, ExamIn, PatientIn, ReportIn
from .errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    FieldErrors,
    Hl7Error,
)
from .message import Message, Segment

M = TypeVar("M", bound=BaseModel)
NATIONAL_ID_TYPES = ("NNCHN", "NI")
AGE, CHIEF_COMPLAINT = "30525-0", "8661-1"
FINDINGS, IMPRESSION = ("18782-3", "GDT", "&GDT"), ("19005-8", "IMP", "&IMP")
FINAL = ("F", "C")
_KEY: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=KEY)])
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def _cjk(text: str) -> bool:
    return any(ord(c) > 0x2E7F for c in text)


def person_name(family: str | None, given: str | None) -> str | None:
    parts = [p for p in (family, given) if p]
    if not parts:
        return None
    return ("" if any(_cjk(p) for p in parts) else " ").join(parts)


def hl7_time(value: str | None, default_offset: str, where: str) -> dt.datetime | None:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+ZZZZ]); no offset: `default_offset`."""
    if value is None:
        return None
    found = _DTM.match(value)
    if not found:
        raise Hl7Error(where, DATA_TYPE_ERROR, "not an HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])")
    year, month, day, hour, minute, second, frac, offset = found.groups()
    offset = offset or default_offset
    sign = -1 if offset[0] == "-" else 1
    zone = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        return dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
            int(second or 0), int((frac or "0").ljust(6, "0")[:6]), tzinfo=zone,
        )  # fmt: skip
    except ValueError:
        raise Hl7Error(where, DATA_TYPE_ERROR, "not a valid date/time") from None


class Fields:
    """Values for a request model, each with the HL7 location it came from."""

    def __init__(self, default_location: str) -> None:
        self.values: dict[str, Any] = {}
        self.locations: dict[str, str] = {}
        self.default_location = default_location

    def put(self, name: str, value: Any, location: str) -> None:
        self.locations[name] = location
        if value is not None:
            self.values[name] = value

    def validate(self, model: type[M]) -> M:
        """The model's own validation; its errors become one ERR each (no values)."""
        try:
            return model.model_validate(self.values)
        except ValidationError as exc:
            raise FieldErrors([self._error(e) for e in exc.errors()]) from None

    def _error(self, error: Any) -> Hl7Error:
        loc = [str(p) for p in error.get("loc", ())]
        message = str(error.get("msg", "invalid"))
        name = loc[0] if loc else message.split(":", 1)[0].removeprefix("Value error, ")
        where = self.locations.get(name, self.default_location)
        code = REQUIRED_FIELD_MISSING if error.get("type") == "missing" else DATA_TYPE_ERROR
        return Hl7Error(where, code, f"{name}: {message}" if loc else message)


def _pid(msg: Message) -> Segment:
    pid = msg.first("PID")
    if pid is None:
        raise Hl7Error("PID^1", REQUIRED_FIELD_MISSING, "a PID segment is required")
    return pid


def patient_identifiers(pid: Segment) -> tuple[str | None, str | None]:
    """(MRN, national ID) from PID-3's repetitions."""
    mrn = national = fallback = None
    for rep in pid.repetitions(3):
        value, kind = pid.component_of(rep, 1), (pid.component_of(rep, 5) or "").upper()
        if kind in NATIONAL_ID_TYPES:
            national = national or value
        elif kind == "MR":
            mrn = mrn or value
        else:
            fallback = fallback or value
    return mrn or fallback, national


def _obx(msg: Message, codes: tuple[str, ...]) -> tuple[list[Segment], str | None]:
    found = [s for s in msg.all("OBX") if (s.value(3) or "").upper() in codes]
    lines = [v for s in found for v in (s.component_of(r, 1) for r in s.repetitions(5)) if v]
    return found, "\n".join(lines) if lines else None


def patient(msg: Message) -> tuple[str, PatientIn]:
    """(MRN, registration) of an ADT^A01/A04/A08 (also the surviving patient of an A40)."""
    pid = _pid(msg)
    mrn, national = patient_identifiers(pid)
    fields = Fields(pid.location(3))
    fields.put("mrn", mrn, pid.location(3))
    fields.put("national_id", national, pid.location(3))
    fields.put("name", person_name(pid.value(5, 1), pid.value(5, 2)), pid.location(5))
    born = hl7_time(pid.value(7), "+0000", pid.location(7))
    fields.put("birth_date", born.date() if born else None, pid.location(7))
    fields.put("sex", pid.value(8), pid.location(8))
    phone_rep = (pid.repetitions(13) or [""])[0]
    phone = pid.component_of(phone_rep, 1) or pid.component_of(phone_rep, 12)
    fields.put("phone", phone, pid.location(13))
    for codes, name in (((AGE,), "age"), ((CHIEF_COMPLAINT,), "chief_complaint")):
        found, value = _obx(msg, codes)
        if found:
            fields.put(name, value, found[0].location(5))
    pv2 = msg.first("PV2")
    if "chief_complaint" not in fields.values and pv2 is not None:
        fields.put("chief_complaint", pv2.value(3, 2) or pv2.value(3, 1), pv2.location(3))
    record = fields.validate(BulkPatient)
    return record.mrn, PatientIn.model_validate(record.model_dump(exclude={"mrn"}))


def prior_mrn(msg: Message) -> str:
    """The MRN an A40 merges away (MRG-1), checked as the REST path checks an MRN."""
    mrg = msg.first("MRG")
    if mrg is None:
        raise Hl7Error("MRG^1", REQUIRED_FIELD_MISSING, "an A40 needs its MRG segment")
    return key(mrg.value(1), mrg.location(1), "prior MRN")


def key(value: str | None, where: str, name: str) -> str:
    """An MRN or exam no., checked by the REST routes' own rule (schemas.KEY)."""
    if value is None:
        raise Hl7Error(where, REQUIRED_FIELD_MISSING, f"{name}: required")
    try:
        return _KEY.validate_python(value)
    except ValidationError as exc:
        rule = str(exc.errors()[0].get("msg", "invalid"))
        raise Hl7Error(where, DATA_TYPE_ERROR, f"{name}: {rule}") from None


def order_control(msg: Message) -> str:
    orc = msg.first("ORC")
    if orc is None:
        raise Hl7Error("ORC^1", REQUIRED_FIELD_MISSING, "an order needs its ORC segment")
    control = orc.value(1)
    if control not in ("NW", "CA"):
        raise Hl7Error(orc.location(1), TABLE_VALUE_NOT_FOUND, "ORC-1: NW (new) or CA (cancel)")
    return control


def _exam_no(msg: Message) -> tuple[str | None, str]:
    for name, field in (("IPC", 1), ("OBR", 3), ("ORC", 3)):
        segment = msg.first(name)
        if segment is not None and segment.value(field):
            return segment.value(field), segment.location(field)
    return None, "OBR^1^3"


def exam_no_location(msg: Message) -> str:
    return _exam_no(msg)[1]


def exam_no(msg: Message) -> str:
    value, where = _exam_no(msg)
    return key(value, where, "exam no.")


def _first_of(msg: Message, *places: tuple[str, int, int]) -> tuple[str | None, str]:
    for name, field, component in places:
        segment = msg.first(name)
        if segment is not None and segment.value(field, component):
            return segment.value(field, component), segment.location(field)
    name, field, _ = places[0]
    return None, f"{name}^1^{field}"


def exam(msg: Message, default_offset: str) -> tuple[str, ExamIn]:
    """(exam no., exam) of an ORM^O01 / OMI^O23 new order."""
    number, number_at = _exam_no(msg)
    fields = Fields(number_at)
    fields.put("exam_no", number, number_at)
    mrn, _national = patient_identifiers(_pid(msg))
    fields.put("patient_mrn", mrn, _pid(msg).location(3))
    fields.put("exam_uid", *_first_of(msg, ("ORC", 2, 1), ("OBR", 2, 1)))
    fields.put("modality", *_first_of(msg, ("IPC", 5, 1), ("OBR", 24, 1)))
    fields.put("exam_type", *_first_of(msg, ("OBR", 4, 2), ("OBR", 4, 1)))
    fields.put("body_part", *_first_of(msg, ("OBR", 15, 4)))
    fields.put("method", *_first_of(msg, ("OBR", 44, 2), ("OBR", 44, 1)))
    fields.put("device", *_first_of(msg, ("OBR", 21, 1)))
    fields.put("requesting_department", *_first_of(msg, ("ORC", 17, 2), ("ORC", 17, 1)))
    when, when_at = _first_of(msg, ("OBR", 7, 1), ("ORC", 9, 1))
    fields.put("exam_datetime", hl7_time(when, default_offset, when_at), when_at)
    fields.put("study_instance_uid", *_first_of(msg, ("IPC", 3, 1), ("ZDS", 1, 1)))
    record = fields.validate(BulkExam)
    return record.exam_no, ExamIn.model_validate(record.model_dump(exclude={"exam_no"}))


def _interpreter(obr: Segment, field: int) -> str | None:
    """OBR-32/33 (NDL): its first component, ID&family&given or a name alone."""
    family, given = obr.value(field, 1, 2), obr.value(field, 1, 3)
    return person_name(family, given) or obr.value(field, 1, 1)


def report(msg: Message, default_offset: str) -> tuple[str, ReportIn]:
    """(exam no., report) of an ORU^R01 with a final (F) or corrected (C) result; a
    preliminary one is refused with the reason (B3: reviewed, approved reports only)."""
    obr = msg.first("OBR")
    if obr is None:
        raise Hl7Error("OBR^1", REQUIRED_FIELD_MISSING, "a result needs its OBR segment")
    status = obr.value(25)
    if status not in FINAL:
        raise Hl7Error(
            obr.location(25), TABLE_VALUE_NOT_FOUND,
            "OBR-25: the result is not final; only reviewed and approved reports are taken "
            "(F final, C correction): send it again once approved",
        )  # fmt: skip
    number = exam_no(msg)
    fields = Fields(obr.location(3))
    for name, codes in (("findings", FINDINGS), ("impression", IMPRESSION)):
        found, text = _obx(msg, codes)
        where = found[0].location(5) if found else "OBX^1^3"
        for segment in found:
            if segment.value(11) not in FINAL:
                raise Hl7Error(
                    segment.location(11), TABLE_VALUE_NOT_FOUND,
                    "OBX-11: the observation is not final (F) or corrected (C)",
                )  # fmt: skip
        fields.put(name, text, where)
    fields.put("author", _interpreter(obr, 32), obr.location(32))
    fields.put("reviewer", _interpreter(obr, 33), obr.location(33))
    approved = hl7_time(obr.value(22), default_offset, obr.location(22))
    fields.put("approved_at", approved, obr.location(22))
    fields.put("exam_uid", *_first_of(msg, ("ORC", 2, 1), ("OBR", 2, 1)))
    pid = msg.first("PID")
    if pid is not None:
        fields.put("patient_mrn", patient_identifiers(pid)[0], pid.location(3))
    return number, fields.validate(ReportIn)
