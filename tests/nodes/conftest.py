"""A whole stack with two central Orthanc nodes and two indexer nodes, for the tests that
run two copies (#19, 4).

It lives in a state directory of its own under var/, on free ports, and is stopped and
removed once the last test of tests/nodes has run (package scope), before the integration
session's stack starts: one full stack at a time on this machine.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from deploy.stack.client import ORTHANC_POOL_LIMITS, StackClient
from deploy.stack.context import StackContext
from deploy.stack.launcher import down, load_context, up
from deploy.stack.services.central import CentralOrthanc, central_nodes
from deploy.stack.services.indexer import indexer_nodes
from deploy.stack.settings import REPO_ROOT, StackSettings

NODES = 2  # central nodes, and indexer nodes


@dataclass(frozen=True)
class CentralNode:
    """One central node: its service name, REST URL, basic credentials, port and log."""

    name: str
    url: str
    auth: tuple[str, str]
    port: int
    log: Path

    @classmethod
    def of(cls, node: CentralOrthanc) -> CentralNode:
        return cls(node.name, node.url, node.credentials, node.ctx.ports[node.http_port], node.log)

    def client(self) -> httpx.Client:
        """An httpx client for this node's own REST API (not through the gateway)."""
        return httpx.Client(
            base_url=self.url, auth=self.auth, timeout=30.0, limits=ORTHANC_POOL_LIMITS
        )

    def upload_study(self, instances: Iterable[Dataset]) -> list[Uploaded]:
        """POST each instance to this node's /instances (asserting 200), in order."""
        uploaded = []
        with self.client() as node:
            for ds in instances:
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                answer = node.post("/instances", content=buffer.getvalue())
                assert answer.status_code == 200, answer.text
                uploaded.append(
                    Uploaded(str(ds.SOPInstanceUID), answer.json()["ID"], buffer.getvalue())
                )
        return uploaded


@dataclass(frozen=True)
class Uploaded:
    """One instance as sent: its SOP Instance UID, the ID Orthanc gave it, its bytes."""

    sop_uid: str
    orthanc_id: str
    raw: bytes


@dataclass(frozen=True)
class TwoCentrals:
    """The running stack: its context (for launcher calls), its stack.env client, and each
    central node, node 1 (`central`) first."""

    ctx: StackContext
    client: StackClient
    nodes: list[CentralNode]

    @property
    def indexer_ports(self) -> list[int]:
        """Each indexer node's port, node 1 (`indexer`) first."""
        return [self.ctx.ports[n.port_name] for n in indexer_nodes(self.ctx)]

    @property
    def gateway_access_log(self) -> Path:
        return self.ctx.state / "gateway" / "logs" / "access.log"

    def token(self, who: str) -> str:
        """An access token of a demo user: ADMIN, RADIOLOGIST_A, ... (stack.env's names)."""
        user, password = self.client[f"DEMO_{who}_USER"], self.client[f"DEMO_{who}_PASSWORD"]
        return str(self.client.password_token(user, password)["access_token"])


@pytest.fixture(scope="package")
def two_centrals() -> Iterator[TwoCentrals]:
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="test-nodes-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    settings = dataclasses.replace(
        StackSettings.from_env(str(state)), central_nodes=NODES, indexer_nodes=NODES
    )
    ctx = load_context(settings)
    try:
        up(ctx, say=lambda msg: print(msg, flush=True))
        nodes = [CentralNode.of(node) for node in central_nodes(ctx)]
        yield TwoCentrals(ctx, StackClient.from_file(settings.stack_env), nodes)
    finally:
        down(ctx, say=lambda _msg: None)
        shutil.rmtree(state, ignore_errors=True)
