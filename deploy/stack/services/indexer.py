"""The indexer (FastAPI under uvicorn), migrated with Alembic before it starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from indexer.security.pii import PiiCipher

from ..context import INSTITUTION_A, INSTITUTION_B, REALM, StackContext
from ..errors import StackError
from ..ports import indexer_port
from .base import Service, http_health

INSTITUTIONS = {INSTITUTION_A: "Demo Hospital A", INSTITUTION_B: "Demo Hospital B"}


class Indexer(Service):
    """Indexer node `node` (1-based): node 1 is `indexer` and migrates the database before
    it starts; node k is `indexer-k` on port indexer_k, on the same database."""

    name = "indexer"
    ports = ("indexer",)

    def __init__(self, ctx: StackContext, node: int = 1) -> None:
        super().__init__(ctx)
        self.node = node
        self.name = "indexer" if node == 1 else f"indexer-{node}"
        self.port_name = indexer_port(node)
        self.ports = (self.port_name,)

    def env(self) -> dict[str, str]:
        dsn = self.ctx.pg_dsn("indexer", "indexer", "db_indexer")
        realm_path = f"/realms/{REALM}"
        repo = self.ctx.settings.repo_root
        # The HA topology's local proxy fronts every central and Keycloak node: the
        # indexer's searches and key fetch then name no one node (docs/ha.md).
        if self.ctx.settings.ha:
            central, keycloak = self.ctx.http("central_lb"), self.ctx.http("keycloak_lb") + "/auth"
        else:
            central, keycloak = self.ctx.http("central_http"), self.ctx.keycloak_internal_url
        return {
            "INDEXER_DATABASE_URL": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
            "INDEXER_GATEWAY_URL": self.ctx.gateway_url,
            "INDEXER_PII_KEY_FILE": str(self.pii_key_file),
            "INDEXER_OIDC_ISSUER": self.ctx.keycloak_public_url + realm_path,
            "INDEXER_OIDC_JWKS_URL": keycloak + realm_path + "/protocol/openid-connect/certs",
            "INDEXER_CENTRAL_URL": central,
            "INDEXER_CENTRAL_BASIC_AUTH": "central-admin:" + self.ctx.secrets["central_orthanc"],
            "INDEXER_PLATFORM_KEY": self.ctx.secrets["indexer_platform_key"],
            # the gateway's X-Gateway-Secret: only its requests' forwarded address counts
            "INDEXER_GATEWAY_FORWARD_SECRET": self.ctx.secrets["gateway_forward_secret"],
            # orthanc-plugins: the fleet validates rules with the edge's own schema and
            # checks release bundles with its verifier (imgcloud.edge_rules, release_bundle)
            "PYTHONPATH": os.pathsep.join(str(root) for root in (repo, repo / "orthanc-plugins")),
            # prometheus-client's multiprocess mode: this node's workers' values (metrics.py)
            "PROMETHEUS_MULTIPROC_DIR": str(self.ctx.state / "metrics" / self.name),
            # release bundles are accepted only if signed with the platform's release key
            "INDEXER_FLEET_RELEASE_PUBLIC_KEY": str(release_public_key(self.ctx)),
        }

    @property
    def pii_key_file(self) -> Path:
        return self.ctx.state / "keys" / "indexer-pii.json"

    def ensure_pii_keys(self) -> None:
        """Personal-data keys, generated once per stack (mode 0600)."""
        path = self.pii_key_file
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(PiiCipher.generate_document()))

    def _run(self, argv: list[str], what: str) -> None:
        root = self.ctx.settings.repo_root
        try:
            subprocess.run(
                argv,
                check=True,
                timeout=120,
                env=os.environ | self.env(),
                cwd=root,
                stdout=open(self.log, "ab"),
                stderr=subprocess.STDOUT,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StackError(self.name, f"{what} failed: {exc}", self.log) from exc

    def prepare(self) -> None:
        root = self.ctx.settings.repo_root
        bin_dir = self.ctx.settings.venv_bin
        self.ensure_pii_keys()
        # prometheus-client's files of this node's previous workers: a fresh start counts anew
        shutil.rmtree(self.ctx.state / "metrics" / self.name, ignore_errors=True)
        if self.node > 1:
            return  # node 1 migrated the database and registered the institutions
        self._run(
            [
                str(bin_dir / "alembic"),
                "-c",
                str(root / "indexer" / "alembic.ini"),
                "upgrade",
                "head",
            ],
            "alembic upgrade",
        )
        # patients written before the name index (migration 0008) join it once
        self._run([str(bin_dir / "python"), "-m", "indexer", "names", "index"], "name index")
        for code, name in INSTITUTIONS.items():
            self._run(
                [str(bin_dir / "python"), "-m", "indexer", "institutions", "add", code, name],
                f"registering institution {code}",
            )

    def argv(self) -> list[str]:
        # `serve` runs uvicorn with this node's audit sealer beside it (one, not one per
        # worker). uvicorn's own proxy headers are off (request.client stays the TCP peer):
        # the indexer believes a forwarded client address only on a request bearing the
        # gateway's secret header (audit_middleware.client_address), whoever connects.
        return [
            str(self.ctx.settings.venv_bin / "python"),
            "-m",
            "indexer",
            "serve",
            "--",
            str(self.ctx.settings.venv_bin / "uvicorn"),
            "indexer.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ctx.ports[self.port_name]),
            "--workers",
            "2",  # one per core: the lookups are CPU-bound Python
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-proxy-headers",
        ]

    def health(self) -> str | None:
        return http_health(f"{self.ctx.http(self.port_name)}/api/healthz")


def indexer_nodes(ctx: StackContext) -> list[Indexer]:
    """Every indexer node this stack's settings name, node 1 first."""
    return [Indexer(ctx, node) for node in range(1, ctx.settings.indexer_nodes + 1)]


def release_public_key(ctx: StackContext) -> Path:
    """The platform's release public key (the key pair is made once per stack)."""
    from ...release import ensure_key_pair  # deploy.release: the release tooling

    return ensure_key_pair(ctx.state)[1]
