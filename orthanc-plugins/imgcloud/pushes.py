"""Cross-hospital pushes (跨院推送), recorded at central in PostgreSQL.

Hospital A asks central to send a study to hospital B. Central never connects into a
hospital: it records the push, B's edge polls for pending pushes, claims one, pulls the
study and C-STOREs it to B's PACS, then reports the outcome. Both hospitals read the state.

    pending -> claimed -> delivered
                       -> failed -> claimed (B retries) ...
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import PluginError
from .instance_hashes import open_pool
from .routes import describe

M = TypeVar("M", bound=BaseModel)

# The table imgcloud_pushes and its indexes come from central-orthanc/migrations/
# (revision 0001), among them imgcloud_pushes_one_open: one open push per study and
# receiver, so create() is INSERT ... ON CONFLICT; open_pool checks the revision.
OPEN = "state IN ('pending', 'claimed')"
TRANSITIONS = {
    "pending": {"claimed"},
    "claimed": {"claimed", "delivered", "failed"},  # re-claim after the edge restarted
    "failed": {"claimed"},
    "delivered": set(),
}
_INSTITUTION = re.compile(r"^[A-Z0-9]{2,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AET = re.compile(r"^[A-Za-z0-9_ -]{1,16}$")


class PushRejected(PluginError):
    """The request is invalid or not allowed now; `status` is the HTTP answer to give."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _matching(pattern: re.Pattern[str], message: str, max_length: int = 64) -> Any:
    """A before-validator: the value must be a string matching `pattern`, else `message`."""

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not pattern.match(value) or len(value) > max_length:
            raise ValueError(message)
        return value

    return BeforeValidator(check)


_INSTITUTION_CODE = _matching(_INSTITUTION, "must be an institution code (2-16 A-Z, 0-9)")


class PushCreate(BaseModel):
    """A push request: study UID, from and to institution codes, optional target AE."""

    model_config = ConfigDict(validate_default=True)
    study_instance_uid: Annotated[str, _matching(_UID, "must be a DICOM UID")] = ""
    from_institution: Annotated[str, _INSTITUTION_CODE] = ""
    to_institution: Annotated[str, _INSTITUTION_CODE] = ""
    deliver_to: Annotated[str | None, _matching(_AET, "must be an AE title (1-16 characters)")] = (
        None
    )
    requested_by: str | None = None

    @field_validator("deliver_to", mode="wrap")
    @classmethod
    def _optional(cls, value: Any, handler: Any) -> Any:
        return None if value is None else handler(value)

    @field_validator("requested_by", mode="before")
    @classmethod
    def _requester(cls, value: Any) -> str | None:
        return str(value or "")[:128] or None

    @model_validator(mode="after")
    def _two_hospitals(self) -> PushCreate:
        if self.from_institution == self.to_institution:
            raise ValueError("to_institution: must differ from from_institution")
        return self


class PushReport(BaseModel):
    """A state report from the receiving hospital's edge."""

    institution: Any = None
    state: Any = None
    instances: Annotated[int, Field(strict=True, ge=0)] | None = None
    detail: str | None = None

    @field_validator("instances", mode="wrap")
    @classmethod
    def _count(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("must be a count") from None

    @field_validator("detail", mode="before")
    @classmethod
    def _detail(cls, value: Any) -> str | None:
        return str(value or "")[:500] or None


def _validated(model: type[M], body: Any) -> M:
    """`body` as `model`, or PushRejected (422) naming every field at fault."""
    if isinstance(body, model):
        return body
    if not isinstance(body, dict):
        raise PushRejected("body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PushRejected(describe(exc), 422) from None


def validate_request(body: Any) -> dict[str, Any]:
    """A push request as the registry stores it (PushRejected if invalid)."""
    return _validated(PushCreate, body).model_dump()


def check_transition(current: str, proposed: Any) -> str:
    if proposed not in TRANSITIONS:
        raise PushRejected(f"state: must be one of {', '.join(TRANSITIONS)}", 422)
    if proposed not in TRANSITIONS[current]:
        raise PushRejected(f"a push that is {current} cannot become {proposed}", 409)
    return str(proposed)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["push_id"] = str(out["push_id"])
    for key in ("created_at", "updated_at", "delivered_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


class PushRegistry:
    def __init__(self, conninfo: dict[str, Any]) -> None:
        self._pool = open_pool(conninfo, "push-registry", row_factory=dict_row)

    def close(self) -> None:
        self._pool.close()

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn:
                rows: list[dict[str, Any]] = conn.execute(sql, params).fetchall()  # type: ignore[assignment]  # dict_row
                return rows
        except psycopg.errors.UniqueViolation:  # the one-open-push index (ids are random)
            raise PushRejected(
                "another push of this study to this institution is open", 409
            ) from None
        except psycopg.Error as exc:
            raise PluginError(f"push registry unavailable: {type(exc).__name__}") from exc

    def create(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Record a push; an open push of the same study to the same place is reused
        (the unique index decides between concurrent creators, on any central)."""
        request = validate_request(request)
        for _ in range(3):  # the open one may close between the INSERT and the SELECT
            row = self._run(
                f"""INSERT INTO imgcloud_pushes (push_id, study_instance_uid, from_institution,
                       to_institution, deliver_to, requested_by, state)
                   VALUES (%s, %s, %s, %s, %s, %s, 'pending')
                   ON CONFLICT (study_instance_uid, to_institution) WHERE {OPEN}
                   DO NOTHING RETURNING *""",  # noqa: S608 - a fixed condition
                (
                    uuid.uuid4(),
                    request["study_instance_uid"],
                    request["from_institution"],
                    request["to_institution"],
                    request["deliver_to"],
                    request["requested_by"],
                ),
            )
            if row:
                return _public(row[0]), True
            open_push = self._run(
                f"""SELECT * FROM imgcloud_pushes WHERE study_instance_uid = %s
                   AND to_institution = %s AND {OPEN} LIMIT 1""",  # noqa: S608
                (request["study_instance_uid"], request["to_institution"]),
            )
            if open_push:
                return _public(open_push[0]), False
        raise PushRejected("the study's open push keeps changing; retry", 409)

    def get(self, push_id: str) -> dict[str, Any] | None:
        try:
            key = uuid.UUID(push_id)
        except ValueError:
            return None
        rows = self._run("SELECT * FROM imgcloud_pushes WHERE push_id = %s", (key,))
        return _public(rows[0]) if rows else None

    def list(self, to_institution: str, state: str | None, limit: int = 100) -> list[dict]:
        if state is not None and state not in TRANSITIONS:
            raise PushRejected(f"state: must be one of {', '.join(TRANSITIONS)}", 422)
        rows = self._run(
            """SELECT * FROM imgcloud_pushes WHERE to_institution = %s
               AND (%s::text IS NULL OR state = %s) ORDER BY created_at LIMIT %s""",
            (to_institution, state, state, limit),
        )
        return [_public(r) for r in rows]

    def change(self, push_id: str, body: Any) -> dict[str, Any]:
        """Apply a state report from the receiving hospital's edge."""
        push = self.get(push_id)
        if push is None:
            raise PushRejected("no such push", 404)
        report = _validated(PushReport, body)
        if report.institution != push["to_institution"]:
            raise PushRejected("only the receiving institution reports on a push", 403)
        state = check_transition(push["state"], report.state)
        rows = self._run(
            """UPDATE imgcloud_pushes SET state = %s, detail = %s,
                   instances = COALESCE(%s, instances), updated_at = now(),
                   delivered_at = CASE WHEN %s = 'delivered' THEN now() ELSE delivered_at END
               WHERE push_id = %s AND state = %s RETURNING *""",
            (
                state,
                report.detail,
                report.instances,
                state,
                uuid.UUID(push_id),
                push["state"],
            ),
        )
        if not rows:
            raise PushRejected("the push changed meanwhile; read it and retry", 409)
        return _public(rows[0])
