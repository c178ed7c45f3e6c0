"""What an access decision is, and how a route acts on one: the facts it is made from
(`StudyFacts`), the answer (`Decision`, made by `allow` or `refuse`), and `require`,
`unconfined` and `confined_to`, which turn an answer into a refusal raised or the
institution a permission is confined to.

It knows no rule: services/access.py is the one place that decides, and re-exports all
of this, so routes name only `access`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import Forbidden, IndexerError, InvalidRecord, NotFound

# Readers: a viewer's DICOMweb (staff of an institution), or a hospital's edge through its
# gateway account (central's REST API).
Via = Literal["viewer", "edge"]

# bases of decisions that the routes act on
# reads and writes everything (not the audit trail); also the `scope` of a permission that is
# confined to no institution (no institution code is lower case)
WHOLE_ARCHIVE = "platform-admin"
GATEWAY = "gateway"  # a hospital's gateway on central's REST API: the call's own check decides
MUTUAL_RECOGNITION = "mutual-recognition"  # 互认: another institution's exam, a stated purpose
NOT_ALLOWED = "not allowed"  # the gateway's one refusal text: it tells nothing about a study


@dataclass(frozen=True)
class StudyFacts:
    """What the index holds about one study, as far as access goes."""

    uid: str | None  # None: the request names no study (see may_read)
    owner: str | None = None  # its institution (arrivals, else exams); None: unknown
    # a live grant to the caller's institution, or to the caller alone (push, 互认, consent,
    # break-glass), made by the study's owner by arrival (services/ownership.py)
    granted: bool = False


@dataclass(frozen=True)
class Decision:
    """Allowed or not, why (`basis`), and for a refusal what the caller is told and with
    which status (403, 404 or 422 naming `field`). `scope`: the institution an allowed
    permission is confined to; WHOLE_ARCHIVE when it is confined to none; None: to nothing
    (`confined_to` refuses it)."""

    allowed: bool
    basis: str
    message: str = ""
    status: int = 403
    field: str | None = None
    scope: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


def allow(basis: str, scope: str | None = None) -> Decision:
    return Decision(True, basis, scope=scope)


def refuse(message: str, basis: str = "refused", status: int = 403, field: str = "") -> Decision:
    return Decision(False, basis, message, status, field or None)


def require(decision: Decision) -> Decision:
    """The decision if allowed; else its refusal raised (403, 404, or 422 on its field)."""
    if decision.allowed:
        return decision
    error: IndexerError
    if decision.status == 404:
        error = NotFound(decision.message)
    elif decision.status == 422:
        error = InvalidRecord(decision.field or "body", decision.message)
    else:
        error = Forbidden(decision.message)
    raise error


def unconfined(decision: Decision) -> bool:
    """An allowed decision over every institution (scope WHOLE_ARCHIVE)."""
    return decision.allowed and decision.scope == WHOLE_ARCHIVE


def confined_to(decision: Decision) -> str:
    """The one institution an allowed decision is confined to; refused (403) when it is
    refused, unconfined (ask `unconfined` first) or confined to nothing."""
    if not decision.allowed or not decision.scope or decision.scope == WHOLE_ARCHIVE:
        raise Forbidden(NOT_ALLOWED)
    return decision.scope
