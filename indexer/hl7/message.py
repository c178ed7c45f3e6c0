"""One HL7 v2 message, decoded and parsed: the character set named by MSH-18, hl7apy's
parse of the structure, and positional access to the fields.

What is trusted: nothing in the bytes. The MSH segment is read first (it is ASCII in both
character sets taken here), the whole message is then decoded strictly with the codec
MSH-18 names, and hl7apy parses it (segment names, MSH fields, the version it supports);
anything it refuses is answered AR. Values are then read by position (segment, field,
repetition, component, subcomponent) from the message's own text with its own encoding
characters and unescaped (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\): hl7apy keeps values
escaped and types components per version and datatype, which a positional mapping
(parse.py) does not need. No value is ever put in an exception message or a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from .errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION,
    Rejected,
)

# MSH-18 (HL7 table 0211) -> Python codec; an empty MSH-18 is taken as UTF-8.
CHARSETS = {
    "": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "GB 18030": "gb18030",
    "ASCII": "ascii",
}
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
PROCESSING_IDS = ("P",)  # production only: a training or debugging message is refused
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass(frozen=True)
class Encoding:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def unescape(value: str, enc: Encoding, codec: str) -> str:
    """HL7 escape sequences replaced by what they stand for (an unknown one kept as is)."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    named = {
        "F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition,
        "E": esc, ".br": "\n", "H": "", "N": "",
    }  # fmt: skip
    out: list[str] = []
    i = 0
    while i < len(value):
        end = value.find(esc, i + 1) if value[i] == esc else -1
        if end < 0:
            out.append(value[i])
            i += 1
            continue
        sequence = value[i + 1 : end]
        if sequence in named:
            out.append(named[sequence])
        elif re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", sequence):
            out.append(bytes.fromhex(sequence[1:]).decode(codec, errors="replace"))
        else:
            out.append(value[i : end + 1])
        i = end + 1
    return "".join(out)


class Segment:
    """A segment's fields by HL7 position: field(3) is PID-3 (MSH-1 is the separator)."""

    def __init__(self, name: str, ordinal: int, fields: list[str], msg: Message) -> None:
        self.name = name
        self.ordinal = ordinal  # 1 for the first segment of this name
        self._fields = fields
        self._msg = msg

    def location(self, field: int, component: int | None = None) -> str:
        """ERR-2 (ERL): segment^sequence^field[^repetition^component]."""
        where = f"{self.name}^{self.ordinal}^{field}"
        return where if component is None else f"{where}^1^{component}"

    def raw(self, field: int) -> str:
        index = field - 1 if self.name == "MSH" else field
        return self._fields[index] if 0 < index < len(self._fields) else ""

    def repetitions(self, field: int) -> list[str]:
        raw = self.raw(field)
        return raw.split(self._msg.encoding.repetition) if raw else []

    def value(
        self, field: int, component: int = 1, sub: int = 1, repetition: str | None = None
    ) -> str | None:
        """The unescaped value, or None if empty; `repetition` defaults to the first."""
        enc = self._msg.encoding
        text = repetition if repetition is not None else (self.repetitions(field) or [""])[0]
        components = text.split(enc.component)
        if component > len(components):
            return None
        subs = components[component - 1].split(enc.subcomponent)
        if sub > len(subs):
            return None
        found = unescape(subs[sub - 1], enc, self._msg.codec).strip()
        return found or None

    def component_of(self, repetition: str, component: int, sub: int = 1) -> str | None:
        return self.value(0, component, sub, repetition=repetition)


class Message:
    """A decoded, parsed message; `kind` is e.g. ("ADT", "A01")."""

    def __init__(self, raw: bytes) -> None:
        charset, codec = _charset(raw)
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            raise Rejected(
                "MSH^1^18", DATA_TYPE_ERROR, "the bytes are not valid in the MSH-18 charset"
            ) from None
        text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        self.charset, self.codec, self.text = charset, codec, text
        header = text.split("\r", 1)[0]
        if len(header) < 8 or header[3] in "\r\n":
            raise Rejected("MSH^1^2", REQUIRED_FIELD_MISSING, "MSH-1 and MSH-2 are required")
        chars = header[4:8]
        self.encoding = Encoding(header[3], chars[0], chars[1], chars[2], chars[3])
        if len(set(self.encoding.__dict__.values())) != 5 or any(c.isalnum() for c in chars):
            raise Rejected("MSH^1^2", DATA_TYPE_ERROR, "MSH-2 must be four distinct separators")
        self.segments: list[Segment] = []
        counts: dict[str, int] = {}
        for line in text.split("\r"):
            if not line.strip():
                continue
            fields = line.split(self.encoding.field)
            name = fields[0]
            if not _SEGMENT_NAME.match(name):
                raise Rejected("", SEGMENT_SEQUENCE, "a segment without a valid name")
            counts[name] = counts.get(name, 0) + 1
            self.segments.append(Segment(name, counts[name], fields, self))
        if counts.get("MSH") != 1:
            raise Rejected("MSH^1", SEGMENT_SEQUENCE, "exactly one MSH segment is required")
        self.msh = self.segments[0]
        self.control_id = self.msh.value(10) or ""
        self.kind = (self.msh.value(9, 1) or "", self.msh.value(9, 2) or "")
        self.version = self.msh.value(12) or ""
        self.processing_id = self.msh.value(11) or ""
        self.sending_facility = self.msh.value(4)
        self._check_header()
        try:  # the library's parse: the structure must be HL7 of the version named
            parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        except Exception:  # hl7apy raises many kinds; every one means "not parsed"
            raise Rejected("", SEGMENT_SEQUENCE, "the message could not be parsed") from None

    def _check_header(self) -> None:
        if not self.control_id:
            raise Rejected("MSH^1^10", REQUIRED_FIELD_MISSING, "MSH-10 (control ID) is required")
        if len(self.control_id) > 199:
            raise Rejected("MSH^1^10", DATA_TYPE_ERROR, "MSH-10 is longer than 199 characters")
        if self.version not in VERSIONS:
            raise Rejected(
                "MSH^1^12", UNSUPPORTED_VERSION, f"MSH-12: versions {', '.join(VERSIONS)} only"
            )
        if self.processing_id not in PROCESSING_IDS:
            raise Rejected(
                "MSH^1^11", UNSUPPORTED_PROCESSING_ID, "MSH-11: processing ID P (production) only"
            )

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def _charset(raw: bytes) -> tuple[str, str]:
    """(MSH-18 as sent, codec): read from the MSH segment's bytes, ASCII in every charset
    taken. Unknown: AR."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise Rejected("MSH^1", SEGMENT_SEQUENCE, "the message must begin with an MSH segment")
    header = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(header) < 8:
        raise Rejected("MSH^1^2", REQUIRED_FIELD_MISSING, "MSH-1 and MSH-2 are required")
    separator = header[3:4]
    fields = header.split(separator)
    value = fields[17] if len(fields) > 17 else b""
    label = value.split(header[5:6])[0].decode("ascii", errors="replace").strip() if value else ""
    codec = CHARSETS.get(label.upper())
    if codec is None:
        raise Rejected(
            "MSH^1^18", DATA_TYPE_ERROR, "MSH-18: UNICODE UTF-8 or GB 18030-2000 (or empty) only"
        )
    return label, codec
