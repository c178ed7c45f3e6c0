"""Bring the whole stack up (idempotently), report its health, and take it down."""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass

from .context import (
    CLI_CLIENT_ID,
    INSTITUTION_A,
    INSTITUTION_B,
    REALM,
    S3_BUCKET,
    StackContext,
)
from .errors import PortInUse, StackError
from .modes import tighten
from .pki import ensure_pki, issue_leaf
from .ports import HA_PORT_NAMES, allocate, port_is_free
from .processes import stop
from .sandbox import platform_for
from .secrets_store import ensure_secrets
from .services.base import Service
from .services.central import CentralOrthanc, central_nodes
from .services.dicom_tls import DicomTlsA, DicomTlsB
from .services.gateway import Gateway
from .services.hl7 import hl7_services
from .services.indexer import Indexer, indexer_nodes
from .services.keycloak import Keycloak
from .services.orthanc import (
    HOSPITAL_PACS_TLS_NAME,
    EdgeA,
    EdgeB,
    EdgeOrthanc,
)
from .services.postgres import Postgres
from .services.prometheus import monitoring_services
from .services.seaweedfs import SeaweedFS
from .settings import StackSettings
from .topology import ha_replacements

# Start order; stop is the reverse.
SERVICE_CLASSES: tuple[type[Service], ...] = (
    Postgres,
    SeaweedFS,
    Keycloak,
    CentralOrthanc,
    EdgeA,
    EdgeB,
    DicomTlsA,
    DicomTlsB,
    Indexer,
    Gateway,
)


def load_context(settings: StackSettings) -> StackContext:
    """Ports, secrets and certificates of a stack (created on first use).

    From here on, this process creates private files only (umask 077): the stack's state
    holds secrets and personal data.
    """
    os.umask(0o077)
    for path in (settings.state_dir, settings.log_dir, settings.run_dir):
        path.mkdir(parents=True, exist_ok=True)
    return StackContext(
        settings=settings,
        ports=allocate(settings.state_dir / "ports.json", settings.port_names),
        secrets=ensure_secrets(settings.state_dir / "secrets.json"),
        pki=ensure_pki(settings.state_dir / "pki"),
    )


def services(ctx: StackContext) -> list[Service]:
    """Every service of the stack in start order; CentralOrthanc and Indexer stand for
    every node of theirs the settings name, and in the HA topology PostgreSQL, SeaweedFS
    and Keycloak for their clusters (topology.py). The HL7 listener follows the indexer;
    the monitoring (the exporters, Prometheus) comes last."""
    result: list[Service] = []
    clusters = ha_replacements() if ctx.settings.ha else {}
    for cls in SERVICE_CLASSES:
        if cls is CentralOrthanc:
            result += central_nodes(ctx)
        elif cls is Indexer:  # and the HL7 listener, once the indexer has migrated
            result += [*indexer_nodes(ctx), *hl7_services(ctx)]
        elif cls in clusters:
            result += clusters[cls](ctx)
        else:
            result.append(cls(ctx))
    return result + monitoring_services(ctx)  # Prometheus scrapes all of the above


def start_groups(svcs: list[Service]) -> list[list[Service]]:
    """Services in start order, the nodes of one component (consecutive services of one
    class) in one group: they start at the same moment, as nodes of a cluster do."""
    groups: list[list[Service]] = []
    for svc in svcs:
        if groups and type(groups[-1][0]) is type(svc):
            groups[-1].append(svc)
        else:
            groups.append([svc])
    return groups


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    problem: str | None

    @property
    def healthy(self) -> bool:
        return self.pid is not None and self.problem is None


def status(ctx: StackContext) -> list[ServiceStatus]:
    result = []
    for svc in services(ctx):
        pid = svc.pid()
        result.append(ServiceStatus(svc.name, pid, "not running" if pid is None else svc.health()))
    return result


def up(ctx: StackContext, say=print) -> None:
    """Start every service that is not already running and healthy; write stack.env.

    On any failure, everything is stopped again and the StackError propagates.
    """
    try:
        tighten(ctx.state, skip=(ctx.settings.cache_dir,))
        platform_for(ctx.settings).check()  # before starting anything: a missing root
        for group in start_groups(services(ctx)):
            _start_together(ctx, group, say)
        write_stack_env(ctx)
    except StackError:
        down(ctx, say=lambda _msg: None)
        raise
    except Exception as exc:
        down(ctx, say=lambda _msg: None)
        raise StackError("launcher", f"{type(exc).__name__}: {exc}") from exc


def _start_together(ctx: StackContext, group: list[Service], say) -> None:
    """Start every service of `group` that is not running, then wait for each in turn."""
    started: dict[str, float] = {}
    for svc in group:
        pid = svc.pid()
        if pid is not None and svc.health() is None:
            if svc.provision_when_running:
                svc.after_healthy()
            say(f"  {svc.name:<10} already running (pid {pid})")
            continue
        if pid is None:
            for port_name in svc.ports:
                port = ctx.ports[port_name]
                if not port_is_free(port):
                    raise PortInUse(
                        svc.name, f"port {port} ({port_name}) is in use by another program"
                    )
            svc.prepare()
            started[svc.name] = time.monotonic()
            svc.start()
        else:
            started[svc.name] = time.monotonic()
    for svc in group:
        if svc.name not in started:
            continue
        svc.wait_healthy(ctx.settings.start_timeout_s)
        svc.after_healthy()
        say(f"  {svc.name:<10} healthy in {time.monotonic() - started[svc.name]:.1f} s")


def service(ctx: StackContext, name: str) -> Service:
    """One service of the stack by name."""
    for svc in services(ctx):
        if svc.name == name:
            return svc
    raise KeyError(name)


def stop_service(ctx: StackContext, name: str) -> None:
    """Stop one service (outage drills in tests)."""
    svc = service(ctx, name)
    stop(ctx.settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=svc.stop_timeout_s)


def kill_service(ctx: StackContext, name: str) -> None:
    """SIGKILL one service, as a crash or power loss would (resilience drills in tests); a
    service with a kill of its own (a Patroni node: its PostgreSQL too) is killed by it."""
    svc = service(ctx, name)
    own_kill = getattr(svc, "kill", None)
    if own_kill is not None:
        own_kill()
        return
    stop(ctx.settings.run_dir, svc.name, sig=signal.SIGKILL, timeout_s=10)


def start_service(ctx: StackContext, name: str) -> None:
    """Start one stopped service again and wait until it is healthy."""
    svc = service(ctx, name)
    if svc.pid() is None:
        svc.prepare()
        svc.start()
    svc.wait_healthy(ctx.settings.start_timeout_s)
    svc.after_healthy()


def down(ctx: StackContext, say=print) -> None:
    for svc in reversed(services(ctx)):
        if stop(ctx.settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=svc.stop_timeout_s):
            say(f"  {svc.name:<10} stopped")
        # a Patroni node's PostgreSQL runs in a session of its own: one whose Patroni died
        # would be left running
        left_behind = getattr(svc, "stop_postgres_left_behind", None)
        if left_behind is not None:
            left_behind()


def clean(settings: StackSettings) -> None:
    """Remove the state directory (keeping the download cache if it lives inside it)."""
    state = settings.state_dir
    if not state.exists():
        return
    for child in state.iterdir():
        if child.resolve() == settings.cache_dir:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def stack_env(ctx: StackContext) -> dict[str, str]:
    """The launcher contract: what tools, tests and benchmarks read from var/stack.env."""
    s, p = ctx.secrets, ctx.ports
    env = {
        "STACK_DIR": str(ctx.state),
        "GATEWAY_URL": ctx.gateway_url,
        "CA_CERT": str(ctx.pki["ca_cert"]),
        "KEYCLOAK_URL": ctx.keycloak_public_url,
        "KEYCLOAK_INTERNAL_URL": ctx.keycloak_internal_url,
        "KEYCLOAK_REALM": REALM,
        "OIDC_CLI_CLIENT_ID": CLI_CLIENT_ID,
        "CENTRAL_ORTHANC_URL": ctx.http("central_http"),
        "CENTRAL_ORTHANC_USER": "central-admin",
        "CENTRAL_ORTHANC_PASSWORD": s["central_orthanc"],
        "CENTRAL_NODES": str(ctx.settings.central_nodes),
        "INDEXER_URL": ctx.http("indexer"),
        "S3_ENDPOINT": ctx.http("weed_s3"),
        "S3_BUCKET": S3_BUCKET,
        "S3_ACCESS_KEY": s["s3_access_key"],
        "S3_SECRET_KEY": s["s3_secret_key"],
        "POSTGRES_PORT": str(p["postgres"]),
        "DEMO_RADIOLOGIST_A_USER": "radiologist.a",
        "DEMO_RADIOLOGIST_A_PASSWORD": s["demo_radiologist_a"],
        "DEMO_RADIOLOGIST_B_USER": "radiologist.b",
        "DEMO_RADIOLOGIST_B_PASSWORD": s["demo_radiologist_b"],
        "DEMO_ADMIN_USER": "platform.admin",
        "DEMO_ADMIN_PASSWORD": s["demo_admin"],
        "DEMO_AUDITOR_USER": "auditor.demo",
        "DEMO_AUDITOR_PASSWORD": s["demo_auditor"],
        "DEMO_HOSPITAL_ADMIN_A_USER": "admin.a",
        "DEMO_HOSPITAL_ADMIN_A_PASSWORD": s["demo_hospital_admin_a"],
        "DEMO_CLINICIAN_B_USER": "clinician.b",
        "DEMO_CLINICIAN_B_PASSWORD": s["demo_clinician_b"],
        "DEMO_REGULATOR_USER": "regulator.demo",
        "DEMO_REGULATOR_PASSWORD": s["demo_regulator"],
    }
    for node in central_nodes(ctx)[1:]:  # CENTRAL_k_ORTHANC_*: node k's own REST API
        env |= {
            f"CENTRAL_{node.node}_ORTHANC_URL": node.url,
            f"CENTRAL_{node.node}_ORTHANC_USER": node.credentials[0],
            f"CENTRAL_{node.node}_ORTHANC_PASSWORD": node.credentials[1],
        }
    env["TOPOLOGY"] = ctx.settings.topology
    if ctx.settings.ha:  # each node's own address (the clients' ones above are the proxy's)
        env |= {f"HA_{name.upper()}_PORT": str(p[name]) for name in HA_PORT_NAMES}
    modality_cert, modality_key = issue_leaf(ctx.pki["ca_cert"].parent, "demo-modality", "DEMO_CT")
    env |= {"MODALITY_TLS_CERT": str(modality_cert), "MODALITY_TLS_KEY": str(modality_key)}
    # the hospital PACS stand-ins' certificate (server and client), for the demo and tests
    pacs_cert, pacs_key = issue_leaf(
        ctx.pki["ca_cert"].parent,
        "hospital-pacs",
        "HOSP_PACS",
        dns_names=("localhost", HOSPITAL_PACS_TLS_NAME),  # the sidecars check the latter
    )
    env |= {"PACS_TLS_CERT": str(pacs_cert), "PACS_TLS_KEY": str(pacs_key)}
    edges: dict[str, EdgeOrthanc] = {"A": EdgeA(ctx), "B": EdgeB(ctx)}
    for letter, institution in (("A", INSTITUTION_A), ("B", INSTITUTION_B)):
        low = letter.lower()
        listeners = edges[letter].dicom_listeners()
        env |= {
            f"EDGE_{letter}_URL": ctx.http(f"edge_{low}_http"),
            f"EDGE_{letter}_USER": f"edge-{low}-admin",
            f"EDGE_{letter}_PASSWORD": s[f"edge_{low}_orthanc"],
            f"EDGE_{letter}_AET": f"EDGE_{institution}",
            # two DICOM listeners: Orthanc's plain port, the sidecar's mutual-TLS port
            f"EDGE_{letter}_DICOM_PORT": str(p[f"edge_{low}_dicom"]),
            f"EDGE_{letter}_DICOM_TLS_PORT": str(p[f"edge_{low}_dicom_tls"]),
            f"EDGE_{letter}_TLS_ONLY_AETS": ",".join(p["AET"] for p in listeners["TlsPeers"]),
            # the sidecar's address for the PACS's certificate
            f"EDGE_{letter}_TLS_SOURCE_ADDRESS": edges[letter].tls_source_address,
            f"EDGE_{letter}_INSTITUTION": institution,
            f"EDGE_{letter}_PACS_AET": "HOSP_PACS",
            f"EDGE_{letter}_PACS_PORT": str(p[f"hospital_pacs_{low}"]),
        }
    return env


def write_stack_env(ctx: StackContext) -> None:
    path = ctx.settings.stack_env
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in stack_env(ctx).items()))


def read_stack_env(path) -> dict[str, str]:
    """Parse a stack.env file (KEY=VALUE lines)."""
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    return env
