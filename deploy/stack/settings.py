"""Where the stack lives on disk and which pinned versions it runs (one settings object)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from .ports import port_names

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_versions(path: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        versions[key.strip()] = value.strip().strip('"')
    return versions


def admin_cidrs(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of networks; ValueError names the bad entry."""
    networks = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=True)))
        except ValueError as exc:
            raise ValueError(f"STACK_KEYCLOAK_ADMIN_CIDRS: {entry!r} is not a network") from exc
    return tuple(networks)


MAX_NODES = 8
# IMGCLOUD_TOPOLOGY: "small" (one process per component, the default) or "ha" (no single
# point of failure in the cloud tier: docs/ha.md).
TOPOLOGIES = ("small", "ha")


def topology(text: str) -> str:
    """The topology named (case and spaces ignored); ValueError names the choices."""
    name = text.strip().lower() or "small"
    if name not in TOPOLOGIES:
        raise ValueError(f"IMGCLOUD_TOPOLOGY: {text!r} is not one of {', '.join(TOPOLOGIES)}")
    return name


def node_count(variable: str, text: str) -> int:
    """How many nodes of a component run (1..MAX_NODES); ValueError names the variable."""
    try:
        count = int(text.strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"{variable}: {text!r} is not a whole number from 1 to {MAX_NODES}")
    return count


@dataclass(frozen=True)
class StackSettings:
    """Paths and versions for one stack. STACK_DIR picks the state directory (default var/)."""

    state_dir: Path
    cache_dir: Path
    repo_root: Path = REPO_ROOT
    versions: dict[str, str] = field(default_factory=dict)
    # How long each service may take to become healthy before `up` gives up.
    start_timeout_s: float = 180.0
    # Networks from which the gateway lets Keycloak's admin console and master realm through
    # (STACK_KEYCLOAK_ADMIN_CIDRS, comma-separated). None by default: administrators use
    # Keycloak on loopback.
    keycloak_admin_cidrs: tuple[str, ...] = ()
    # How many central Orthanc nodes run (STACK_CENTRAL_NODES): one PostgreSQL index, one
    # bucket, a key ring each; node 1 is `central`, node k `central-k`. The gateway's
    # upstream lists every one.
    central_nodes: int = 1
    # How many indexer nodes run (STACK_INDEXER_NODES): one database; node 1 is `indexer`
    # (and runs the migrations), node k `indexer-k`. Their background loops take leases.
    indexer_nodes: int = 1
    # "small" or "ha" (IMGCLOUD_TOPOLOGY). The HA topology runs at least two central and two
    # indexer nodes whatever STACK_CENTRAL_NODES and STACK_INDEXER_NODES say.
    topology: str = "small"

    @classmethod
    def from_env(cls, state_dir: str | None = None) -> StackSettings:
        """Build settings from the environment (STACK_DIR, STACK_CACHE_DIR)."""
        state = Path(state_dir or os.environ.get("STACK_DIR") or REPO_ROOT / "var").resolve()
        cache = Path(os.environ.get("STACK_CACHE_DIR") or REPO_ROOT / "var" / "cache").resolve()
        versions = _read_versions(REPO_ROOT / "deploy" / "versions.env")
        timeout = float(os.environ.get("STACK_START_TIMEOUT", "180"))
        shape = topology(os.environ.get("IMGCLOUD_TOPOLOGY", "small"))
        least = 2 if shape == "ha" else 1
        return cls(
            state_dir=state,
            cache_dir=cache,
            versions=versions,
            start_timeout_s=timeout,
            keycloak_admin_cidrs=admin_cidrs(os.environ.get("STACK_KEYCLOAK_ADMIN_CIDRS", "")),
            central_nodes=max(
                least,
                node_count("STACK_CENTRAL_NODES", os.environ.get("STACK_CENTRAL_NODES", "1")),
            ),
            indexer_nodes=max(
                least,
                node_count("STACK_INDEXER_NODES", os.environ.get("STACK_INDEXER_NODES", "1")),
            ),
            topology=shape,
        )

    def __post_init__(self) -> None:
        node_count("central_nodes", str(self.central_nodes))
        node_count("indexer_nodes", str(self.indexer_nodes))
        topology(self.topology)

    @property
    def ha(self) -> bool:
        """Whether this is the redundant topology (IMGCLOUD_TOPOLOGY=ha)."""
        return self.topology == "ha"

    @property
    def venv_bin(self) -> Path:
        return self.repo_root / ".venv" / "bin"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def stack_env(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def keycloak_home(self) -> Path:
        return self.cache_dir / f"keycloak-{self.versions['KEYCLOAK_VERSION']}"

    @property
    def ohif_dist(self) -> Path:
        return self.cache_dir / f"ohif-{self.versions['OHIF_VERSION']}"

    @property
    def bind_shim(self) -> Path:
        return self.cache_dir / "bindlo.so"

    @property
    def port_names(self) -> tuple[str, ...]:
        """Every port name of this stack: the fixed ones and each extra node's."""
        return port_names(self.central_nodes, self.indexer_nodes, ha=self.ha)

    def log(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"
