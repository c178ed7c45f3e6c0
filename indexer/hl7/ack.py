"""Replies (HL7 "original mode" acknowledgements), built with hl7apy: MSH, MSA and one ERR
per error. AA: accepted; AE: an error in the content (field location, code of HL7 table
0357, the rule); AR: not taken (type, version, processing ID, charset, framing).

Before 2.5, ERR-1 (ELD) carries the location and the code; from 2.5, ERR-2 (ERL), ERR-3,
ERR-4 (severity E) and ERR-8 (the rule). MSA-3 holds the first rule in every version. Only
rules and locations are written, never a value of the message."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message as Hl7apyMessage

from .errors import CODE_TEXT, Hl7Error

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_LOCATION = re.compile(r"[^A-Z0-9^]")
ACK_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")


def escape(text: str, limit: int = 250) -> str:
    """A value as ER7 text (the separators escaped, control characters dropped)."""
    text = "".join(c for c in text[:limit] if c.isprintable())
    for plain, escaped in _ESCAPES:
        text = text.replace(plain, escaped)
    return text


def ack(
    code: str,
    *,
    control_id: str = "",
    trigger: str = "",
    version: str = "2.5",
    charset: str = "",
    sender: tuple[str, str] = ("", ""),
    us: tuple[str, str] = ("IMGCLOUD", "IMGCLOUD"),
    errors: list[Hl7Error] = (),  # type: ignore[assignment]
) -> str:
    """The ACK as ER7 text (segments ended by CR). `sender` is the message's (MSH-3,
    MSH-4), answered in our MSH-5/MSH-6; `charset` is echoed in MSH-18."""
    version = version if version in ACK_VERSIONS else "2.5"
    reply = Hl7apyMessage("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    msh = reply.msh
    msh.msh_3 = escape(us[0], 180)
    msh.msh_4 = escape(us[1], 180)
    if sender[0]:
        msh.msh_5 = escape(sender[0], 180)
    if sender[1]:
        msh.msh_6 = escape(sender[1], 180)
    msh.msh_7 = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    msh.msh_9 = f"ACK^{escape(trigger, 3)}^ACK" if trigger else "ACK"
    msh.msh_10 = uuid.uuid4().hex[:20]
    msh.msh_11 = "P"
    msh.msh_12 = version
    if charset:
        msh.msh_18 = escape(charset, 16)
    msa = reply.msa
    msa.msa_1 = code
    if control_id:
        msa.msa_2 = escape(control_id, 199)
    if errors:
        msa.msa_3 = escape(errors[0].rule, 80)
    for error in errors:
        segment = reply.add_segment("ERR")
        where = _LOCATION.sub("", error.location)[:80]  # ours: segment^sequence^field
        text = escape(CODE_TEXT.get(error.code, ""), 60)
        if version in ("2.5", "2.5.1"):
            if where:
                segment.err_2 = where
            segment.err_3 = f"{error.code}^{text}^HL70357"
            segment.err_4 = "E"
            segment.err_8 = escape(error.rule)
        else:
            segment.err_1 = f"{where}^{error.code}&{text}&HL70357"
    return str(reply.to_er7()) + "\r"
