"""The contract every stack service follows."""

from __future__ import annotations

import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..context import StackContext
from ..errors import ServiceUnhealthy
from ..processes import exited, read_pid, spawn


class Service:
    """A native process: how to prepare, start, check and stop it."""

    name: str = ""
    ports: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 30.0
    # Pipe the output through deploy.stack.logredact (for programs that log DICOM values).
    redact_log: bool = False

    def __init__(self, ctx: StackContext) -> None:
        self.ctx = ctx

    @property
    def log(self) -> Path:
        return self.ctx.settings.log(self.name)

    def prepare(self) -> None:
        """Write configuration, create directories (before start)."""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def user(self) -> str | None:
        return None

    def start(self) -> int:
        return spawn(
            self.name,
            self.argv(),
            run_dir=self.ctx.settings.run_dir,
            log=self.log,
            env=self.env(),
            cwd=self.ctx.state,
            user=self.user(),
            redact_log=self.redact_log,
        )

    def health(self) -> str | None:
        """None if healthy, else a short reason."""
        raise NotImplementedError

    def after_healthy(self) -> None:
        """Provisioning that needs the running service (databases, buckets, realm)."""

    # Run after_healthy also when `up` finds the service already running (idempotent
    # provisioning a newer release may extend, e.g. migrations on a database left running).
    provision_when_running: bool = False

    def pid(self) -> int | None:
        return read_pid(self.ctx.settings.run_dir, self.name)

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll health until it passes; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None or exited(pid):
                raise ServiceUnhealthy(self.name, "exited during start-up", self.log)
            reason = self.health()
            if reason is None:
                return
            time.sleep(0.5)
        raise ServiceUnhealthy(
            self.name, f"not healthy after {timeout_s:.0f} s: {reason}", self.log
        )


def http_health(
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    verify: bool | ssl.SSLContext = True,
    check: Callable[[httpx.Response], str | None] | None = None,
) -> str | None:
    """GET url with a short timeout; None if it answers 200 (and `check` passes)."""
    try:
        response = httpx.get(url, auth=auth, verify=verify, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"GET {url}: {type(exc).__name__}"
    if response.status_code != 200:
        return f"GET {url}: HTTP {response.status_code}"
    return check(response) if check else None
