"""Central Orthanc: one or more nodes over one PostgreSQL index and one S3 bucket.

Node 1 is `central` (ports central_http/central_dicom), as a one-node stack has always
had it; node k is `central-k` (central_k_http/central_k_dicom) with its own home, key
folder and Orthanc Name. Every node answers with the same credentials, so the gateway may
send any request to any of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgcloud.errors import KeyRingError
from imgcloud.storage.keyring import KeyRing, changing_key_ring, write_key_ring

from ..context import S3_BUCKET, StackContext
from ..errors import StackError
from ..ports import central_ports
from ..sandbox import PLUGIN_DIR
from .orthanc_base import OrthancService


def central_name(node: int) -> str:
    """The service name of central node `node` (1-based)."""
    return "central" if node == 1 else f"central-{node}"


class CentralOrthanc(OrthancService):
    role = "central"
    static_config = "central-orthanc/orthanc.json"
    http_user = "central-admin"
    password_key = "central_orthanc"  # noqa: S105 - the name of a generated secret
    # the class's own name for node 1 (tests and tools read CentralOrthanc.name)
    name = "central"
    ports = ("central_http",)

    def __init__(self, ctx: StackContext, node: int = 1) -> None:
        super().__init__(ctx)
        if node < 1:
            raise ValueError(f"central node {node}: nodes count from 1")
        self.node = node
        self.name = central_name(node)
        self.http_port, self.dicom_port = central_ports(node)
        self.ports = (self.http_port,)  # its DICOM server is off (central-orthanc/orthanc.json)

    @property
    def orthanc_name(self) -> str:
        return "imaging-cloud-" + self.name

    def ensure_key_ring(self) -> Path:
        """Node 1 generates the ring; node k starts with a copy of it when it has none (the
        local stand-in for a secret store that gives every node the same ring), owned as
        node 1's is. Each node then keeps its own file, as each production node does, and
        must not start with a ring that disagrees with node 1's."""
        if self.node == 1:
            return super().ensure_key_ring()
        path = self.key_ring_file
        first = CentralOrthanc(self.ctx, 1).ensure_key_ring()
        if path.is_symlink():
            raise StackError(self.name, f"key ring {path}: not a regular file (a symbolic link)")
        try:
            if not path.exists():
                self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                with changing_key_ring(first):  # not half-way through a change of node 1's
                    owner = first.stat()
                    ring = KeyRing.from_file(first, "central key ring")
                    write_key_ring(ring, path, owner=(owner.st_uid, owner.st_gid))
            check_ring_agrees(self.name, path, first)
        except KeyRingError as exc:
            raise StackError(self.name, str(exc)) from None
        return path

    def runtime_config(self) -> dict[str, Any]:
        plugins = PLUGIN_DIR
        node: dict[str, Any] = {}
        if self.node > 1:
            # Orthanc tells the nodes of one database apart by this (its jobs, among
            # others); node 1 keeps the identifier it has always had.
            node["DatabaseServerIdentifier"] = self.orthanc_name
        return (
            self.common_runtime()
            | node
            | {
                "Name": self.orthanc_name,
                "Plugins": [
                    str(plugins / "libOrthancPython.so"),
                    str(plugins / "libOrthancDicomWeb.so"),
                    str(plugins / "libOrthancPostgreSQLIndex.so"),
                ],
                "PythonScript": str(
                    self.ctx.settings.repo_root / "orthanc-plugins/central_plugin.py"
                ),
                "PostgreSQL": {
                    "Host": "127.0.0.1",
                    "Port": self.ctx.ports["postgres"],
                    "Password": self.ctx.secrets["db_central"],
                },
                "ImagingCloud": {
                    "Storage": {
                        "KeyRingFile": str(self.key_ring_file),
                        "S3": {
                            "Endpoint": self.ctx.http("weed_s3"),
                            "Bucket": S3_BUCKET,
                            "CredentialsFile": str(self._s3_credentials_file()),
                        },
                    }
                },
            }
        )

    def _s3_credentials_file(self) -> Path:
        keys = {"AccessKey": "s3_access_key", "SecretKey": "s3_secret_key"}
        return self.write_private(
            "s3.json", json.dumps({k: self.ctx.secrets[v] for k, v in keys.items()})
        )


def central_nodes(ctx: StackContext) -> list[CentralOrthanc]:
    """Every central node this stack's settings name, node 1 first."""
    return [CentralOrthanc(ctx, node) for node in range(1, ctx.settings.central_nodes + 1)]


def check_ring_agrees(name: str, path: Path, first: Path) -> None:
    """StackError unless the ring at `path` holds the same key ids with the same bytes and
    the same current key as node 1's at `first`: a node left out of a rotation (fewer
    STACK_CENTRAL_NODES then), or a regenerated ring on node 1, would seal objects the
    other nodes cannot read, or fail to read theirs."""
    why = KeyRing.from_file(first, "central key ring").disagreement(
        KeyRing.from_file(path, f"{name} key ring")
    )
    if why is not None:
        raise StackError(
            name,
            f"its key ring ({path}) disagrees with central's ({first}): it {why}; make them agree "
            "(python -m imgcloud.storage add-key/promote on it) before starting it",
        )
