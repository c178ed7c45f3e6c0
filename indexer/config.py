"""The indexer's one settings object, read once from the environment (INDEXER_*)."""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]
