"""The indexer (FastAPI under uvicorn), migrated with Alembic before it starts."""

from __future__ import annotations

import os
import subprocess

from ..errors import StackError
from .base import Service, http_health


class Indexer(Service):
    name = "indexer"
    ports = ("indexer",)

    def env(self) -> dict[str, str]:
        dsn = self.ctx.pg_dsn("indexer", "indexer", "db_indexer")
        return {
            "INDEXER_DATABASE_URL": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
            "INDEXER_GATEWAY_URL": self.ctx.gateway_url,
            "PYTHONPATH": str(self.ctx.settings.repo_root),
        }

    def prepare(self) -> None:
        root = self.ctx.settings.repo_root
        try:
            subprocess.run(
                [
                    str(self.ctx.settings.venv_bin / "alembic"),
                    "-c",
                    str(root / "indexer" / "alembic.ini"),
                    "upgrade",
                    "head",
                ],
                check=True,
                timeout=120,
                env=os.environ | self.env(),
                cwd=root,
                stdout=open(self.log, "ab"),
                stderr=subprocess.STDOUT,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StackError(self.name, f"alembic upgrade failed: {exc}", self.log) from exc

    def argv(self) -> list[str]:
        return [
            str(self.ctx.settings.venv_bin / "uvicorn"),
            "indexer.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ctx.ports["indexer"]),
            "--workers",
            "1",
            "--no-access-log",
            "--proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1",
        ]

    def health(self) -> str | None:
        return http_health(f"{self.ctx.http('indexer')}/api/healthz")
