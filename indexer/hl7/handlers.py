"""One HL7 message in, its ACK out: parsed (message.py), mapped to the REST request
models (parse.py), written with the Registry, journalled and audited, all in one
transaction.

Trusted: `Sender.institution` only, which the listener takes from the TLS client
certificate (or from the plain loopback port's configuration), never from the message;
MSH-4, if given, must name the same institution. Everything the message names is then
that institution's (its MRNs, exam nos.).

Idempotency: the journal row (institution, MSH-10) is inserted first; a redelivery finds
it (waiting for the first delivery's transaction if it is still running) and gets the
first ACK again, changing nothing; the same control ID with other content is refused.
The writes run in a savepoint: a refusal rolls them back and keeps the journal row, its
ACK and the audit row. A sequence problem (unknown patient or exam) also keeps the
message, encrypted, for an operator (GET /api/v1/hl7/problems). An unexpected error rolls
everything back and is answered AE without a journal row: a redelivery is tried afresh.
Logs name control IDs, types and outcomes only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ..errors import Conflict, IndexerError, InvalidRecord, NotFound
from ..models import AuditEvent, Institution, Patient
from ..models.hl7 import Hl7Message
from ..security.auth import Principal
from ..security.pii import PiiCipher
from ..services.audit import event
from ..services.registry import Registry
from . import merge, parse
from .ack import ack
from .config import Hl7Settings
from .errors import (
    APPLICATION_ERROR,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY,
    SEGMENT_SEQUENCE,
    UNKNOWN_KEY,
    UNSUPPORTED_EVENT,
    UNSUPPORTED_MESSAGE_TYPE,
    FieldErrors,
    Hl7Error,
    Rejected,
    SequenceProblem,
)
from .message import CHARSETS, Message

log = logging.getLogger(__name__)
EVENTS = {"ADT": ("A01", "A04", "A08", "A40"), "ORM": ("O01",), "OMI": ("O23",), "ORU": ("R01",)}
STATUS = {"AA": 200, "AE": 422, "AR": 400}  # the audit row's outcome, as REST would answer


@dataclass(frozen=True)
class Sender:
    """Who sent it: the institution the listener authenticated, and the peer address."""

    institution: str
    source: str
    channel: str  # "tls" or "plain"

    def principal(self) -> Principal:
        return Principal(
            subject=f"hl7:{self.institution}",
            username=f"hl7-{self.institution}",
            institution=self.institution,
            roles=frozenset({"hl7-sender"}),
        )


@dataclass(frozen=True)
class Result:
    ack: bytes
    code: str  # AA, AE, AR
    replayed: bool = False


class Intake:
    def __init__(
        self, sessions: Callable[[], Session], pii: PiiCipher, settings: Hl7Settings, gateway: str
    ) -> None:
        self.sessions, self.pii, self.settings, self.gateway = sessions, pii, settings, gateway

    # -- the one entry point ------------------------------------------------------------
    def handle(self, raw: bytes, sender: Sender) -> Result:
        try:
            msg = Message(raw)
        except Rejected as exc:
            return self.refuse_unparsed(exc, sender)
        except Exception as exc:  # a case the reader did not foresee: still an answer
            log.error("hl7 message unreadable: %s", type(exc).__name__)
            unread = Rejected("", SEGMENT_SEQUENCE, "the message could not be read")
            return self.refuse_unparsed(unread, sender)
        reply = self._replier(msg)
        try:
            self._check(msg, sender)
        except Rejected as exc:
            return self._audited(msg, sender, "AR", reply("AR", [exc]))
        try:
            with self.sessions() as session, session.begin():
                return self._journalled(session, msg, raw, sender, reply)
        except Exception as exc:  # nothing written: a redelivery is tried afresh
            log.error("hl7 %s %s: %s, rolled back", msg.control_id, msg.kind, type(exc).__name__)
            failure = Hl7Error("", APPLICATION_ERROR, "internal error: send the message again")
            return Result(reply("AE", [failure]), "AE")

    def _replier(self, msg: Message) -> Callable[[str, list[Hl7Error]], bytes]:
        def reply(code: str, errors: list[Hl7Error]) -> bytes:
            text = ack(
                code, control_id=msg.control_id, trigger=msg.kind[1], version=msg.version,
                charset=msg.charset, sender=(msg.msh.value(3) or "", msg.msh.value(4) or ""),
                us=(self.settings.application, self.settings.facility), errors=errors,
            )  # fmt: skip
            return text.encode(msg.codec, errors="replace")

        return reply

    def _check(self, msg: Message, sender: Sender) -> None:
        kind, trigger = msg.kind
        if kind not in EVENTS:
            raise Rejected("MSH^1^9", UNSUPPORTED_MESSAGE_TYPE, "MSH-9: ADT, ORM, OMI, ORU only")
        if trigger not in EVENTS[kind]:
            raise Rejected("MSH^1^9", UNSUPPORTED_EVENT, f"MSH-9: {kind} events taken here: "
                           + ", ".join(EVENTS[kind]))  # fmt: skip
        if msg.sending_facility is not None and msg.sending_facility != sender.institution:
            raise Rejected(
                "MSH^1^4", UNKNOWN_KEY, "MSH-4 names another institution than the sender's"
            )

    # -- journal, dispatch, audit --------------------------------------------------------
    def _journalled(
        self, session: Session, msg: Message, raw: bytes, sender: Sender,
        reply: Callable[[str, list[Hl7Error]], bytes],
    ) -> Result:  # fmt: skip
        code = sender.institution
        if session.get(Institution, code) is None:
            refusal = Rejected("MSH^1^4", UNKNOWN_KEY, "the institution is not registered")
            self._audit(session, msg, sender, "AR")
            return Result(reply("AR", [refusal]), "AR")
        digest = hashlib.sha256(raw).digest()
        kind = "^".join(msg.kind)
        row_id = session.execute(
            pg_insert(Hl7Message)
            .values(institution_code=code, control_id=msg.control_id, message_type=kind,
                    content_hash=digest)
            .on_conflict_do_nothing(index_elements=["institution_code", "control_id"])
            .returning(Hl7Message.id)
        ).scalar()  # fmt: skip
        if row_id is None:
            return self._replay(session, msg, sender, digest, reply)
        row = session.get(Hl7Message, row_id)
        assert row is not None
        reg = Registry(session, self.pii, self.gateway)
        try:
            with session.begin_nested():
                outcome = dispatch(reg, msg, code, self.settings.default_utc_offset)
            row.outcome, row.ack_code, errors = "done", "AA", []
        except Hl7Error as exc:
            errors = exc.errors if isinstance(exc, FieldErrors) else [exc]
            outcome, row.ack_code = "refused", exc.ack_code
            row.outcome = "problem" if isinstance(exc, SequenceProblem) else "refused"
            row.reason = "; ".join(f"{e.location} {e.rule}" for e in errors)[:500]
            if isinstance(exc, SequenceProblem):
                row.raw_enc = self.pii.encrypt(msg.text, "hl7_messages.raw")
        answer = reply(row.ack_code, errors)
        row.ack = answer.decode(msg.codec)
        self._audit(session, msg, sender, row.ack_code)
        log.info("hl7 %s %s from %s: %s %s", msg.control_id, kind, code, row.ack_code, outcome)
        return Result(answer, row.ack_code)

    def _replay(
        self, session: Session, msg: Message, sender: Sender, digest: bytes,
        reply: Callable[[str, list[Hl7Error]], bytes],
    ) -> Result:  # fmt: skip
        first = session.execute(
            select(Hl7Message).where(
                Hl7Message.institution_code == sender.institution,
                Hl7Message.control_id == msg.control_id,
            )
        ).scalar_one()
        if first.content_hash != digest or first.ack is None:
            refusal = Rejected(
                "MSH^1^10", DUPLICATE_KEY, "MSH-10 was used already for another message"
            )
            self._audit(session, msg, sender, "AR")
            return Result(reply("AR", [refusal]), "AR")
        log.info("hl7 %s redelivered: the first ACK again", msg.control_id)
        self._audit(session, msg, sender, str(first.ack_code))
        return Result(first.ack.encode(msg.codec, errors="replace"), str(first.ack_code), True)

    # -- audit --------------------------------------------------------------------------
    def _audit(self, session: Session, msg: Message | None, sender: Sender, code: str) -> None:
        kind = "^".join(msg.kind) if msg is not None else "unparsed"
        record = event(
            sender.principal(), f"hl7.{kind}"[:64],
            f"hl7:{msg.control_id}" if msg is not None else "hl7:?", sender.source,
            STATUS.get(code, 422), method="HL7",
        )  # fmt: skip
        session.execute(insert(AuditEvent).values(**record))

    def _audited(self, msg: Message | None, sender: Sender, code: str, answer: bytes) -> Result:
        try:
            with self.sessions() as session, session.begin():
                self._audit(session, msg, sender, code)
        except Exception as exc:  # the refusal stands; the audit row is what is lost
            log.error("hl7 audit of a refusal failed: %s", type(exc).__name__)
        return Result(answer, code)

    def refuse_unparsed(self, exc: Rejected, sender: Sender) -> Result:
        """AR to bytes that are no message (framing, no MSH, charset); audited."""
        log.info("hl7 from %s refused before parsing: %s", sender.institution, exc.code)
        answer = ack("AR", us=(self.settings.application, self.settings.facility), errors=[exc])
        return self._audited(None, sender, "AR", answer.encode())


def dispatch(reg: Registry, msg: Message, code: str, offset: str) -> str:
    """Write what the message says, for institution `code`: the outcome (created, ...)."""
    kind, trigger = msg.kind
    try:
        if kind == "ADT" and trigger == "A40":
            prior = parse.prior_mrn(msg)
            pid = msg.first("PID")
            mrn = parse.patient_identifiers(pid)[0] if pid is not None else None
            surviving = parse.key(mrn, "PID^1^3", "surviving MRN")
            return merge.merge(reg, code, prior, surviving, msg.control_id)
        if kind == "ADT":
            mrn, patient = parse.patient(msg)
            return reg.put_patient(code, mrn, patient)
        if kind in ("ORM", "OMI"):
            if parse.order_control(msg) == "CA":
                return merge.cancel(reg, code, parse.exam_no(msg), parse.exam_no_location(msg))
            exam_no, exam = parse.exam(msg, offset)
            known = select(Patient.id).where(
                Patient.institution_code == code, Patient.mrn == exam.patient_mrn
            )
            if reg.session.execute(known).first() is None:
                raise SequenceProblem("PID^1^3", "no such patient here: register it first")
            return reg.put_exam(code, exam_no, exam)[0]
        exam_no, report = parse.report(msg, offset)
        try:
            reg.get_exam(code, exam_no)
        except NotFound:
            raise SequenceProblem("OBR^1^3", "no such exam here: order it first") from None
        return reg.put_report(code, exam_no, report)[0]
    except Hl7Error:
        raise  # ours already (an IndexerError too): as it is
    except InvalidRecord as exc:
        raise Hl7Error("", DATA_TYPE_ERROR, f"{exc.field}: {exc}") from None
    except Conflict as exc:
        raise Hl7Error("", DUPLICATE_KEY, str(exc)) from None
    except NotFound as exc:
        raise Hl7Error("", UNKNOWN_KEY, str(exc)) from None
    except IndexerError as exc:
        raise Hl7Error("", APPLICATION_ERROR, type(exc).__name__) from None


def retry(reg: Registry, pii: PiiCipher, row: Hl7Message, offset: str) -> str:
    """Run a kept message (a sequence problem) again, now that its patient or exam may be
    registered: "resolved", or "problem" (still), or "refused" (another error now). The
    sender already has its AE; the journal row says what became of the message."""
    text = pii.decrypt(row.raw_enc or b"", "hl7_messages.raw")
    msg = Message(text.encode(CHARSETS.get(_label(text), "utf-8")))
    try:
        with reg.session.begin_nested():
            dispatch(reg, msg, row.institution_code, offset)
        row.outcome, row.resolved_at = "resolved", dt.datetime.now(dt.UTC)
    except SequenceProblem as exc:
        row.reason = f"{exc.location} {exc.rule}"[:500]
    except Hl7Error as exc:
        errors = exc.errors if isinstance(exc, FieldErrors) else [exc]
        row.outcome = "refused"
        row.reason = "; ".join(f"{e.location} {e.rule}" for e in errors)[:500]
    log.info("hl7 %s retried: %s", row.control_id, row.outcome)
    return row.outcome


def _label(text: str) -> str:
    """MSH-18 of a decoded message (the first repetition)."""
    header = text.split("\r", 1)[0]
    fields = header.split(header[3:4] or "|")
    return fields[17].split(header[5:6] or "~")[0].strip().upper() if len(fields) > 17 else ""
