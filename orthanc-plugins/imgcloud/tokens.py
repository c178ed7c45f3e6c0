"""The hospital gateway's Keycloak service account: client-credentials access tokens,
reused until 30 s before they expire, sent as `Authorization: Bearer` (httpx.Auth)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx

from .errors import ServiceCallError


class ClientCredentials:
    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        verify: Any = True,
        timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.clock = clock
        self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout_s, connect=5))
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token and self._token[1] - 30 > self.clock():
                return self._token[0]
            try:
                answer = self._client.post(
                    self.token_url,
                    data={"grant_type": "client_credentials"},
                    auth=(self.client_id, self._secret),
                )
            except httpx.HTTPError as exc:
                raise ServiceCallError(f"Keycloak did not answer: {type(exc).__name__}") from exc
            if answer.status_code != 200:
                raise ServiceCallError(
                    f"Keycloak refused the gateway account: HTTP {answer.status_code}",
                    answer.status_code,
                )
            body = answer.json()
            self._token = (str(body["access_token"]), self.clock() + float(body["expires_in"]))
            return self._token[0]

    def forget(self) -> None:
        with self._lock:
            self._token = None


class BearerAuth(httpx.Auth):
    """Adds the gateway account's token; on a 401 fetches a new one and retries once."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self.credentials = credentials

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.credentials.token()}"
        response = yield request
        if response.status_code == 401:
            self.credentials.forget()
            request.headers["Authorization"] = f"Bearer {self.credentials.token()}"
            yield request
