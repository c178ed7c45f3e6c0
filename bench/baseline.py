"""A plain Orthanc beside the stack, for benchmarks: central's static configuration and the
same PostgreSQL cluster, but Orthanc's own filesystem storage (no plugin storage area)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context
from deploy.stack.ports import pick_free
from deploy.stack.processes import stop
from deploy.stack.services.base import http_health
from deploy.stack.services.orthanc import CentralOrthanc
from deploy.stack.settings import StackSettings


class BaselineOrthanc(CentralOrthanc):
    name = "bench-baseline"
    database = "orthanc_baseline"

    def __init__(self, ctx: StackContext, http_port: int) -> None:
        super().__init__(ctx)
        # CentralOrthanc names its instances after their node ("central" for node 1): the
        # baseline must keep a name, home and PID file of its own, or stopping it stops central.
        self.name = BaselineOrthanc.name
        self._port = http_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def runtime_config(self) -> dict[str, Any]:
        config = super().runtime_config()
        config["HttpPort"] = self._port
        config["Name"] = "bench-baseline"
        config["PostgreSQL"]["Database"] = self.database
        # Plain Orthanc: none of our plugin code (no storage area, no hash recording).
        config["Plugins"] = [p for p in config["Plugins"] if "Python" not in p]
        config.pop("PythonScript", None)
        return config

    def health(self) -> str | None:
        return http_health(f"{self.url}/system", auth=self.credentials)

    def prepare(self) -> None:
        super().prepare()
        # The merged file has central's storage section: drop it, so Orthanc keeps files
        # itself, exactly as a plain installation does.
        path = self.home / "orthanc.json"
        config = json.loads(path.read_text())
        config.pop("ImagingCloud", None)
        config.pop("PythonScript", None)
        path.write_text(json.dumps(config, indent=2))


def start_baseline(stack_dir: Path) -> tuple[BaselineOrthanc, StackContext]:
    """Start (or reuse) the baseline Orthanc of a running stack; fresh database each time."""
    ctx = load_context(StackSettings.from_env(str(stack_dir)))
    port = pick_free(1, ctx.ports.values())[0]
    baseline = BaselineOrthanc(ctx, port)
    stop(ctx.settings.run_dir, baseline.name)
    with psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports["postgres"],
        user="postgres",
        password=ctx.secrets["postgres_superuser"],
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(BaselineOrthanc.database))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER orthanc_central").format(
                sql.Identifier(BaselineOrthanc.database)
            )
        )
    shutil.rmtree(baseline.home, ignore_errors=True)
    baseline.prepare()
    baseline.start()
    baseline.wait_healthy(120)
    return baseline, ctx


def stop_baseline(baseline: BaselineOrthanc, ctx: StackContext) -> None:
    stop(ctx.settings.run_dir, baseline.name)
