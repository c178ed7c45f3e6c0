"""The HL7 intake's exception tree: each says which reply (AE or AR) it becomes, the
error location (ERR-2, e.g. PID^1^3), the HL7 error code (ERR-3, table 0357) and the rule
broken (ERR-8). Messages never hold values from the message (they may be personal)."""

from __future__ import annotations

from ..errors import IndexerError

# HL7 table 0357 (message error condition codes) used here
SEGMENT_SEQUENCE = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
APPLICATION_ERROR = "207"
CODE_TEXT = {
    SEGMENT_SEQUENCE: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION: "Unsupported version id",
    UNKNOWN_KEY: "Unknown key identifier",
    DUPLICATE_KEY: "Duplicate key identifier",
    APPLICATION_ERROR: "Application internal error",
}


class Hl7Error(IndexerError):
    """A message answered with an error; `ack_code` is AE or AR."""

    ack_code = "AE"

    def __init__(self, location: str, code: str, rule: str) -> None:
        super().__init__(rule)
        self.location = location  # ERR-2, e.g. "PID^1^3" ("" when no field is to blame)
        self.code = code  # ERR-3
        self.rule = rule  # ERR-8, no values


class Rejected(Hl7Error):
    """AR: not a message this listener takes (framing, charset, type, version, processing
    ID, sending facility)."""

    ack_code = "AR"


class FieldErrors(Hl7Error):
    """AE: one or more fields break a rule of the request schema; one ERR each."""

    def __init__(self, errors: list[Hl7Error]) -> None:
        super().__init__(errors[0].location, errors[0].code, errors[0].rule)
        self.errors = errors


class SequenceProblem(Hl7Error):
    """AE, and the message is kept for an operator: it names a patient or an exam this
    institution has not registered (yet)."""

    def __init__(self, location: str, rule: str) -> None:
        super().__init__(location, UNKNOWN_KEY, rule)
