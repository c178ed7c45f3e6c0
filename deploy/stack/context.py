"""What every service needs to know about its stack: settings, ports, secrets, certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .settings import StackSettings

# The two demo hospitals of the local stack.
INSTITUTION_A = "H0001"
INSTITUTION_B = "H0002"
REALM = "imaging-cloud"
CLI_CLIENT_ID = "imaging-cli"
S3_BUCKET = "imaging-archive"


@dataclass(frozen=True)
class StackContext:
    settings: StackSettings
    ports: dict[str, int]
    secrets: dict[str, str]
    pki: dict[str, Path]

    @property
    def state(self) -> Path:
        return self.settings.state_dir

    def http(self, port_name: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_name]}"

    @property
    def gateway_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['gateway']}"

    @property
    def keycloak_public_url(self) -> str:
        return f"{self.gateway_url}/auth"

    @property
    def keycloak_internal_url(self) -> str:
        return f"{self.http('keycloak')}/auth"

    def pg_dsn(self, database: str, user: str, password_key: str) -> str:
        return (
            f"postgresql://{user}:{self.secrets[password_key]}@127.0.0.1:"
            f"{self.ports['postgres']}/{database}"
        )
