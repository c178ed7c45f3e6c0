"""The plugins' one HTTP-call helper: every outbound request goes through `Service.call`,
with its timeout stated, and comes back as an answer or as the component's own exception.

httpx's transport errors become `error(f"{name} did not answer (...)")` with no status; an
answer outside `expect` (by default any status below 400) becomes
`error(f"{name} refused (...): HTTP <status> <start of the body>", status)`, so callers tell
"refused" from "unreachable" by `exc.status`. Request bodies and headers (tokens) are never
part of a message.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import ServiceCallError

DETAIL_CHARS = 200  # of an error answer's body, for the log line


@dataclass
class Service:
    """One remote service as this component sees it: a client, a name, an exception type."""

    client: httpx.Client
    name: str  # as the messages say it: "central", "the indexer", "local Orthanc"
    error: type[ServiceCallError]
    # Explicit on purpose: None only where no network is involved (Orthanc in-process).
    timeout: httpx.Timeout | float | None
    expect: Container[int] | None = None  # the statuses that are success; None: below 400

    def call(
        self, method: str, url: str, what: str, *, expect: Container[int] | None = None, **kw: Any
    ) -> httpx.Response:
        """One request; raises `self.error` when it fails or the answer is not a success."""
        try:
            response = self.client.request(method, url, timeout=self.timeout, **kw)
        except httpx.HTTPError as exc:
            raise self.error(f"{self.name} did not answer ({what}): {type(exc).__name__}") from exc
        allowed = expect if expect is not None else self.expect
        status = response.status_code
        if (status not in allowed) if allowed is not None else status >= 400:
            detail = response.text[:DETAIL_CHARS].strip()
            raise self.error(f"{self.name} refused ({what}): HTTP {status} {detail}", status)
        return response

    def json(self, method: str, url: str, what: str, **kw: Any) -> Any:
        """`call`, and the answer's JSON; an answer that is not JSON raises `self.error`."""
        response = self.call(method, url, what, **kw)
        try:
            return response.json()
        except ValueError as exc:
            raise self.error(f"{self.name} answered ({what}) with something not JSON") from exc
