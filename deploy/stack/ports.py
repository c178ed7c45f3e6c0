"""Free loopback ports, picked once per state directory and kept in ports.json."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

SEAWEEDFS_PORTS = (
    "weed_master",
    "weed_master_grpc",
    "weed_volume",
    "weed_volume_grpc",
    "weed_filer",
    "weed_filer_grpc",
    "weed_s3",
    "weed_s3_grpc",
    # Prometheus metrics of every weed component, on loopback (the benchmarks read it).
    "weed_metrics",
)
# Every port the stack listens on. IMGCLOUD_PORT_<NAME> (upper case) fixes one.
PORT_NAMES = (
    "postgres",
    *SEAWEEDFS_PORTS,
    "keycloak",
    "keycloak_mgmt",
    "central_http",
    "central_dicom",
    "edge_a_http",
    "edge_a_dicom",
    "edge_b_http",
    "edge_b_dicom",
    # Each edge's mutual-TLS DICOM listener (its nginx sidecar; the plain one is Orthanc's),
    # and the sidecar's port on its own loopback address that opens TLS to the PACS.
    "edge_a_dicom_tls",
    "edge_b_dicom_tls",
    "edge_a_pacs_tls",
    "edge_b_pacs_tls",
    "indexer",
    "gateway",
    # Where each hospital's PACS stand-in listens (started by the demo or a test, not by
    # the stack); the edges' DicomModalities point there.
    "hospital_pacs_a",
    "hospital_pacs_b",
    # HL7 v2 intake (#16): MLLP over TLS with each hospital's client certificate, and plain
    # MLLP that only the tests and the demo use (loopback).
    "hl7_mllp",
    "hl7_mllp_plain",
    # Monitoring (#15): Prometheus and the exporters of the components without metrics of
    # their own (PostgreSQL, nginx).
    "prometheus",
    "postgres_exporter",
    "nginx_exporter",
    "gateway_status",  # the gateway's stub_status, for the nginx exporter (loopback)
)


# The redundant topology's extra ports (IMGCLOUD_TOPOLOGY=ha, see docs/ha.md). Clients keep
# the small stack's addresses: "postgres" and "weed_s3" are then the local proxy's fronts
# (HAProxy, health-checked: the current Patroni primary; any live S3 endpoint), and the
# nodes behind them listen on ports of their own. PostgreSQL: three etcd members (Patroni's
# DCS), two PostgreSQL nodes and their Patroni REST APIs. SeaweedFS: masters 2 and 3 (a
# raft of three with "weed_master"), volume servers 2 and 3, a second filer, two S3 nodes.
# Keycloak: a second node and each node's cluster (JGroups) port.
HA_PORT_NAMES = (
    *(f"etcd_{n}_{kind}" for n in (1, 2, 3) for kind in ("client", "peer")),
    "pg_node_1",
    "pg_node_2",
    "patroni_1_api",
    "patroni_2_api",
    "ha_proxy_stats",
    *(f"weed_master_{n}{grpc}" for n in (2, 3) for grpc in ("", "_grpc")),
    *(f"weed_volume_{n}{grpc}" for n in (2, 3) for grpc in ("", "_grpc")),
    "weed_filer_2",
    "weed_filer_2_grpc",
    *(f"weed_s3_node_{n}{grpc}" for n in (1, 2) for grpc in ("", "_grpc")),
    # each SeaweedFS node's Prometheus metrics (the small stack's one server: weed_metrics)
    *(
        f"weed_{kind}{'' if n == 1 else f'_{n}'}_metrics"
        for kind in ("master", "volume")
        for n in (1, 2, 3)
    ),
    "weed_filer_metrics",
    "weed_filer_2_metrics",
    *(f"weed_s3_node_{n}_metrics" for n in (1, 2)),
    "keycloak_2",
    "keycloak_2_mgmt",
    "keycloak_cluster_1",
    "keycloak_cluster_2",
    # the local proxy's fronts for the indexer's own calls: any live central node, any
    # live Keycloak node (so the indexer's study searches and key fetch name no one node)
    "central_lb",
    "keycloak_lb",
)


def central_ports(node: int) -> tuple[str, str]:
    """(HTTP, DICOM) port names of central node `node`: node 1 keeps today's names."""
    prefix = "central" if node == 1 else f"central_{node}"
    return (f"{prefix}_http", f"{prefix}_dicom")


def indexer_port(node: int) -> str:
    """The port name of indexer node `node`: node 1 keeps today's name."""
    return "indexer" if node == 1 else f"indexer_{node}"


def port_names(
    central_nodes: int = 1, indexer_nodes: int = 1, *, ha: bool = False
) -> tuple[str, ...]:
    """PORT_NAMES plus those of central nodes 2..central_nodes and indexer nodes
    2..indexer_nodes, and with `ha` those of the redundant topology."""
    extra = [name for node in range(2, central_nodes + 1) for name in central_ports(node)]
    extra += [indexer_port(node) for node in range(2, indexer_nodes + 1)]
    return (*PORT_NAMES, *extra, *(HA_PORT_NAMES if ha else ()))


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (and we may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a TIME_WAIT left by the previous run must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Where listening ports are picked from when the kernel's ephemeral range leaves room below
# it. A port inside that range can be taken as the source port of any outbound connection
# between the moment we record it and the moment its service binds it (CI once found the
# gateway's port held by a connection of a service started before it).
LOWEST_PORT = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def listening_range() -> range:
    """Ports below the kernel's ephemeral range (and from LOWEST_PORT up), where no outbound
    connection takes a source port; empty when the ephemeral range leaves no room."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return range(LOWEST_PORT, low)


def pick_free(count: int, avoid: Iterable[int]) -> list[int]:
    """`count` distinct ports nothing listens on, none of them in `avoid`: from
    listening_range() in random order, else (no room there) from the kernel's own choice."""
    taken = set(avoid)
    candidates = [p for p in listening_range() if p not in taken]
    random.SystemRandom().shuffle(candidates)
    picked = list(_free_among(candidates, count))
    if len(picked) < count:
        picked += _kernel_picks(count - len(picked), taken | set(picked))
    return picked


def free_port() -> int:
    """One port nothing listens on, for a process a test or bench starts itself beside a
    stack (pick_free: below the ephemeral range, where no outbound connection takes it)."""
    return pick_free(1, ())[0]


def _free_among(candidates: list[int], count: int) -> Iterator[int]:
    found = 0
    for port in candidates:
        if found == count:
            return
        if port_is_free(port):
            found += 1
            yield port


def _kernel_picks(count: int, taken: set[int]) -> list[int]:
    held: list[socket.socket] = []
    picked: list[int] = []
    try:
        while len(picked) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if port not in taken:
                taken.add(port)
                picked.append(port)
    finally:
        for sock in held:
            sock.close()
    return picked


def allocate(path: Path, names: tuple[str, ...] = PORT_NAMES) -> dict[str, int]:
    """Ports for this stack: the recorded ones, else the environment's, else free ones.

    A stack recorded before a port (or a node) was added keeps its ports and gains the new
    one."""
    recorded: dict[str, int] = {}
    if path.exists():
        recorded = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        if set(names) <= set(recorded):
            return recorded
    fixed = {
        name: int(os.environ[f"IMGCLOUD_PORT_{name.upper()}"])
        for name in names
        if os.environ.get(f"IMGCLOUD_PORT_{name.upper()}")
    }
    fixed |= {k: v for k, v in recorded.items() if k in names}
    wanted = [n for n in names if n not in fixed]
    ports = dict(fixed)
    ports.update(zip(wanted, pick_free(len(wanted), fixed.values()), strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ports, indent=1))
    return ports
