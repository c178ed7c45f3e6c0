"""The fleet's settings (INDEXER_FLEET_*), read once from the environment.

Kept beside the fleet's services until the lead folds them into indexer/config.py's one
settings object (same prefix then: INDEXER_FLEET_HEARTBEAT_INTERVAL_S and so on).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_FLEET_", env_file=None, extra="ignore")

    # what central tells each edge in the heartbeat answer; a gateway is stale after
    # `stale_after_missed` of them are missed (the interval it was told, per gateway)
    heartbeat_interval_s: float = Field(default=30.0, gt=0, le=3600)
    stale_after_missed: int = Field(default=3, ge=1, le=100)
    # how often the staleness loop looks (it raises and clears the alerts)
    stale_check_every_s: float = Field(default=5.0, gt=0, le=600)
    # the longest rules long poll (`wait`) an edge may ask for
    long_poll_max_s: float = Field(default=25.0, ge=0, le=60)
    # what the heartbeat answer asks of edges: False (default), fetch the rules when the
    # answer names a newer version (in force within one interval, nothing between
    # heartbeats); True, keep a long poll waiting (in force at once, a request per gateway
    # every `long_poll_max_s`: bench/fleet_bench.py measures both)
    rules_long_poll: bool = False
    # Ed25519 public key (PEM) that release bundles must be signed with; empty: uploads
    # are refused (central never stores a bundle whose signature it did not check)
    release_public_key: Path | None = None
    release_max_bytes: int = Field(default=15 * 1024 * 1024, ge=1024)


@lru_cache(maxsize=1)
def get_fleet_settings() -> FleetSettings:
    return FleetSettings()
