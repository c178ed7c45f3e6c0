"""The launcher's exception tree."""

from __future__ import annotations

from pathlib import Path


class StackError(Exception):
    """Base of every launcher failure; carries the service and the log to read."""

    def __init__(self, service: str, message: str, log: Path | None = None) -> None:
        self.service = service
        self.message = message
        self.log = log
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The single line `make up` prints when it stops."""
        where = f" (log: {self.log})" if self.log else ""
        return f"{self.service}: {self.message}{where}"


class PrerequisiteMissing(StackError):
    """A binary or download that deploy/install.sh should have provided is absent."""


class PortInUse(StackError):
    """A port fixed by the environment is taken by someone else."""


class ServiceUnhealthy(StackError):
    """A service started but never passed its health check in time, or exited."""
