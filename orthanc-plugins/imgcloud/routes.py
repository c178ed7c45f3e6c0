"""The plugins' REST routes as plain Python: which methods a route takes, the JSON body
each one validates with pydantic, and the answer (status and JSON) it gives.

glue_common registers a `Route` with Orthanc and writes its `Reply`; everything here is
testable without Orthanc.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Reply:
    """An answer: 200 with a JSON body, or another status with its body (text or JSON)."""

    status: int = 200
    body: Any = None

    def text(self) -> str:
        """The body as sent: a string as it is (already JSON, or a message), else JSON."""
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def error(status: int, message: str) -> Reply:
    """A refusal with a JSON body {"error": message}."""
    return Reply(status, {"error": message})


@dataclass(frozen=True)
class Request:
    """What a handler sees: the URI's groups, the query, and the body (validated when the
    method names a model, the raw bytes otherwise)."""

    method: str
    groups: tuple[str, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = b""


Handler = Callable[[Request], Reply]


@dataclass(frozen=True)
class Method:
    """One method of a route: its handler and, for a JSON body, the pydantic model.
    A body that is not JSON is answered `json_status`, one the model refuses
    `invalid_status`, each with a message naming every field at fault (and `hint`, the
    body expected, when given)."""

    handler: Handler
    model: type[BaseModel] | None = None
    invalid_status: int = 400
    json_status: int = 400
    hint: str = ""

    def refused(self, status: int, message: str) -> Reply:
        return error(status, f"{message}; {self.hint}" if self.hint else message)


def describe(exc: ValidationError, prefix: str = "") -> str:
    """Each pydantic error as 'field.path: message' (under `prefix`, e.g. a configuration
    section; a whole-body rule's message names its fields itself), joined by '; '."""
    parts = []
    for problem in exc.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        where = ".".join([*([prefix] if prefix else []), *(str(p) for p in problem["loc"])])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class NotAllowed:
    """The method is not one the route takes; `allowed` as the Allow header lists them."""

    allowed: str


class Route:
    """A REST route: its methods, each a handler or a `Method`."""

    def __init__(self, **methods: Handler | Method) -> None:
        self.methods = {
            name: spec if isinstance(spec, Method) else Method(spec)
            for name, spec in methods.items()
        }

    def dispatch(
        self,
        method: str,
        groups: tuple[str, ...] = (),
        query: Mapping[str, str] | None = None,
        body: bytes | str = b"",
    ) -> Reply | NotAllowed:
        """Validate the request for its method and call the handler."""
        spec = self.methods.get(method)
        if spec is None:
            return NotAllowed(",".join(self.methods))
        parsed: Any = body
        if spec.model is not None:
            try:
                document = json.loads(body)
            except ValueError:
                return spec.refused(spec.json_status, "body must be JSON")
            if not isinstance(document, dict):
                return spec.refused(spec.json_status, "body must be a JSON object")
            try:
                parsed = spec.model.model_validate(document)
            except ValidationError as exc:
                return spec.refused(spec.invalid_status, describe(exc))
        return spec.handler(Request(method, tuple(groups), dict(query or {}), parsed))
