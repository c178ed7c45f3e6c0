"""The HL7 listener's one settings object, read once from the environment (HL7_*).

The database, the personal-data keys and the rest come from the indexer's own settings
(INDEXER_*): the listener writes through the indexer's services."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..schemas import CODE

# HL7 times without an offset are taken in this zone (China Standard Time).
DEFAULT_UTC_OFFSET = "+0800"


class Hl7Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HL7_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    # MLLP over TLS: the hospital's client certificate (issued by the stack CA) names it.
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Plain MLLP, loopback only (tests, the demo): the institution is fixed for the port.
    plain_port: int | None = Field(default=None, ge=1, le=65535)
    plain_host: str = "127.0.0.1"
    plain_institution: str | None = Field(default=None, pattern=CODE)
    # Framing and time limits: a frame larger than this is refused and the connection
    # closed; a connection idle this long (no byte of a next frame) is closed; a frame
    # must be complete within frame_timeout_s of its first byte; handling a message that
    # takes longer than handle_timeout_s is answered AE (its transaction rolled back).
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(default=300.0, gt=0)
    frame_timeout_s: float = Field(default=30.0, gt=0)
    handle_timeout_s: float = Field(default=20.0, gt=0)
    max_connections: int = Field(default=64, ge=1)
    workers: int = Field(default=4, ge=1, le=64)  # threads writing to the database
    default_utc_offset: str = Field(default=DEFAULT_UTC_OFFSET, pattern=r"^[+-]\d{4}$")
    # Our own MSH-3/MSH-4 in the ACKs.
    application: str = "IMGCLOUD"
    facility: str = "IMGCLOUD"

    @field_validator("plain_host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if not ipaddress.ip_address(value).is_loopback:
            raise ValueError("plain MLLP listens on a loopback address only")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Hl7Settings:
        tls_files = (self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.tls_port is not None and not all(tls_files):
            raise ValueError("tls_port needs tls_cert, tls_key and tls_client_ca")
        if self.plain_port is not None and not self.plain_institution:
            raise ValueError("plain_port needs plain_institution (the port's one hospital)")
        if self.tls_port is None and self.plain_port is None:
            raise ValueError("give tls_port, plain_port or both")
        return self


@lru_cache(maxsize=1)
def get_hl7_settings() -> Hl7Settings:
    return Hl7Settings()
