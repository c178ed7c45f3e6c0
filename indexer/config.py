"""The indexer's one settings object, read once from the environment (INDEXER_*)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", env_file=None, extra="ignore")

    database_url: SecretStr = Field(
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host:5432/indexer"
    )
    db_pool_size: int = 10
    db_connect_timeout_s: int = 5
    # Public base URL of the HTTPS gateway, used to build DICOMweb and viewer links.
    gateway_url: str = "https://127.0.0.1"
    # Sent by the gateway (nginx) on every request it passes here: only a request bearing
    # it has its forwarded client address believed (the audit trail's source). Empty: none.
    gateway_forward_secret: SecretStr = Field(
        default=SecretStr(""), description="the gateway's X-Gateway-Secret header value"
    )
    # Keys for personal data: {"key_id", "algorithm": "aes-256-gcm"|"sm4-gcm",
    # "encryption_key": base64 (32 bytes; 16 for SM4), "blind_index_key": base64 (32 bytes)}
    pii_key_file: Path = Field(description="JSON key file for personal data (mode 0600)")
    # OpenID Connect (Keycloak): tokens are checked against the realm's signing keys.
    oidc_issuer: str = Field(description="the realm's issuer, as written in its tokens")
    oidc_jwks_url: str = Field(description="where the indexer fetches the realm's public keys")
    oidc_audience: str = "imaging-cloud-api"
    oidc_timeout_s: float = 5.0
    # The regional health information platform that issues master index IDs. Empty: the
    # built-in implementation (routes under /platform/ of this service) is used.
    platform_url: str = ""
    platform_key: SecretStr = Field(
        default=SecretStr(""), description="HMAC key of the built-in master-index generator"
    )
    platform_timeout_s: float = 5.0
    platform_retry_max_s: float = 300.0
    # The central archive's DICOMweb (loopback), for study searches filtered per caller.
    central_url: str = "http://127.0.0.1:8042"
    central_basic_auth: SecretStr = Field(
        default=SecretStr(""), description="user:password of the central Orthanc"
    )
    central_timeout_s: float = 30.0
    # A filtered study search reads at most this many matches from central.
    qido_max_matches: int = 5000
    # Break-glass access lasts this long; each use is posted here too (JSON, no personal data).
    break_glass_hours: int = Field(default=4, ge=1, le=24)
    alert_webhook_url: str = ""
    # Patient share links (云胶片): the longest a link may live.
    share_link_max_hours: int = Field(default=30 * 24, ge=1)
    # Requests larger than this are refused (bulk intake included).
    max_body_bytes: int = 16 * 1024 * 1024
    bulk_max_records: int = 5000
    # 等保2.0 asks for at least six months of audit records.
    audit_retention_days: int = Field(default=180, ge=180)
    # The gateway fleet (#15, docs/fleet.md). The heartbeat interval central tells each
    # edge; a gateway is stale after `fleet_stale_after_missed` of them are missed (the
    # interval it was told, per gateway); the staleness loop looks this often.
    fleet_heartbeat_interval_s: float = Field(default=30.0, gt=0, le=3600)
    fleet_stale_after_missed: int = Field(default=3, ge=1, le=100)
    fleet_stale_check_every_s: float = Field(default=5.0, gt=0, le=600)
    # The longest rules long poll (`wait`) an edge may ask for, and whether the heartbeat
    # answer asks edges to keep one waiting: False (default), they fetch the rules when the
    # answer names a newer version (in force within one interval, nothing between
    # heartbeats); True, in force at once for a request per gateway every long_poll_max_s.
    fleet_long_poll_max_s: float = Field(default=25.0, ge=1, le=60)
    fleet_rules_long_poll: bool = False
    # Ed25519 public key (PEM) release bundles must be signed with; empty: uploads are
    # refused (central never stores a bundle whose signature it did not check).
    fleet_release_public_key: Path | None = None
    fleet_release_max_bytes: int = Field(default=15 * 1024 * 1024, ge=1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]
