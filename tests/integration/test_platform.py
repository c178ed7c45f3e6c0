"""Every Orthanc of the stack runs Debian 13's Orthanc 1.12 and its plugins, whichever way
this host provides them (installed on Debian 13, or the Debian 13 root on Debian 12): each
reports the pinned versions, and the root holds exactly those packages. In the root, each
runs as the service uid 10042 and sees its own key ring only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.processes import read_pid
from deploy.stack.sandbox import SERVICE_GID, SERVICE_UID, debian_major, platform_for
from deploy.stack.services.orthanc import CentralOrthanc, EdgeA, EdgeB, OrthancService
from deploy.stack.settings import REPO_ROOT, StackSettings

ORTHANCS = ("CENTRAL_ORTHANC", "EDGE_A", "EDGE_B")


def credentials(stack: StackClient, prefix: str) -> tuple[str, tuple[str, str]]:
    url = stack[f"{prefix}_URL"]
    return url, (stack[f"{prefix}_USER"], stack[f"{prefix}_PASSWORD"])


@pytest.mark.parametrize("orthanc", ORTHANCS)
def test_every_orthanc_reports_the_pinned_versions(
    stack: StackClient, stack_settings: StackSettings, orthanc: str
) -> None:
    url, auth = credentials(stack, orthanc)
    versions = stack_settings.versions
    system = httpx.get(f"{url}/system", auth=auth, timeout=10).json()
    assert system["Version"] == versions["ORTHANC_EXPECTED"]
    loaded = httpx.get(f"{url}/plugins", auth=auth, timeout=10).json()
    for pair in versions["ORTHANC_PLUGINS_EXPECTED"].split():
        plugin, version = pair.split("=")
        if plugin == "postgresql-index" and orthanc != "CENTRAL_ORTHANC":
            continue  # the edges keep Orthanc's own SQLite index
        assert plugin in loaded, f"{orthanc}: {plugin} not loaded"
        answer = httpx.get(f"{url}/plugins/{plugin}", auth=auth, timeout=10).json()
        assert answer["Version"] == version, f"{orthanc}: {plugin} {answer['Version']}"


def test_the_debian_13_root_holds_the_pinned_orthanc(stack_settings: StackSettings) -> None:
    platform = platform_for(stack_settings)
    if debian_major() >= 13:
        assert platform.root is None  # the host's own packages
        return
    assert platform.root is not None
    packages = platform.versions()
    upstream = packages["orthanc"].split("+")[0]
    assert upstream == stack_settings.versions["ORTHANC_EXPECTED"]
    assert packages["orthanc-python"].startswith("5.0")


def test_nothing_of_the_root_is_mounted_on_the_host(stack_settings: StackSettings) -> None:
    """Each Orthanc's mounts live in its own namespace: the host sees none of them."""
    platform = platform_for(stack_settings)
    if platform.root is None:
        pytest.skip("a Debian 13 host runs Orthanc without a root")
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True,
                            timeout=10, check=True).stdout  # fmt: skip
    assert str(platform.root) not in mounts


def _orthanc_processes(stack_settings: StackSettings) -> dict[str, tuple[int, OrthancService]]:
    ctx = load_context(stack_settings)
    found: dict[str, tuple[int, OrthancService]] = {}
    for cls in (CentralOrthanc, EdgeA, EdgeB):
        service = cls(ctx)
        pid = read_pid(stack_settings.run_dir, service.name)
        assert pid is not None, f"{service.name} is not running"
        found[service.name] = (_the_orthanc(pid), service)
    return found


def _the_orthanc(pid: int) -> int:
    """The Orthanc process of a recorded one: itself, or (an edge, #15) the Orthanc that
    its release supervisor (`deploy.release supervise`) started."""
    pending = [pid]
    while pending:
        current = pending.pop(0)
        if Path(f"/proc/{current}/exe").resolve().name == "Orthanc":
            return current
        for task in Path(f"/proc/{current}/task").iterdir():
            pending += [int(c) for c in (task / "children").read_text().split()]
    raise AssertionError(f"no Orthanc process under pid {pid}")


def _status(pid: int, field: str) -> list[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:(.*)$", status, re.M)
    assert found, f"no {field} in /proc/{pid}/status"
    return found.group(1).split()


def test_every_orthanc_runs_as_the_service_uid(stack_settings: StackSettings) -> None:
    """The recorded process is Orthanc itself, not root: real, effective, saved and file
    system uid and gid 10042, no supplementary group, no_new_privs."""
    if platform_for(stack_settings).root is None:
        pytest.skip("on a Debian 13 host Orthanc still runs as root (not done)")
    seen = {}
    for name, (pid, _) in _orthanc_processes(stack_settings).items():
        seen[name] = (
            Path(f"/proc/{pid}/exe").resolve().name,
            _status(pid, "Uid"),
            _status(pid, "Gid"),
            _status(pid, "Groups"),
            _status(pid, "NoNewPrivs"),
        )
    ids = [str(SERVICE_UID)] * 4
    expected: tuple[str, list[str], list[str], list[str], list[str]]
    expected = ("Orthanc", ids, [str(SERVICE_GID)] * 4, [], ["1"])
    assert seen == dict.fromkeys(seen, expected)


def _read_as_service(pid: int, path: Path, how: str = "cat") -> subprocess.CompletedProcess[str]:
    """Read `path` as the service uid in that Orthanc's own mount namespace and root."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--root", "--wd",
         f"--setuid={SERVICE_UID}", f"--setgid={SERVICE_GID}", how, str(path)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip


def test_an_orthanc_reads_its_own_key_ring_only(stack_settings: StackSettings) -> None:
    """What an Orthanc sees: its own key ring, and neither another Orthanc's key ring nor
    its configuration (passwords) nor the stack's secrets; on the host, the service uid
    cannot reach any key ring (keys/ is root's, 0700)."""
    if platform_for(stack_settings).root is None:
        pytest.skip("on a Debian 13 host Orthanc still runs as root (not done)")
    orthancs = _orthanc_processes(stack_settings)
    secrets_file = stack_settings.state_dir / "secrets.json"
    read, leaked = {}, []
    for name, (pid, service) in orthancs.items():
        own = _read_as_service(pid, service.key_ring_file)
        read[name] = own.returncode == 0 and own.stdout == service.key_ring_file.read_text()
        others = [peer for other, (_, peer) in orthancs.items() if other != name]
        forbidden = [secrets_file, *(stack_settings.state_dir / "pki").glob("*")]
        for peer in others:
            forbidden += [peer.key_ring_file, peer.home / "orthanc.json"]
        leaked += [f"{name}: {p}" for p in forbidden if _read_as_service(pid, p).returncode == 0]
        # Nothing else of var/ either (the default stack, other test stacks) but the cache.
        elsewhere = [p for p in (REPO_ROOT / "var").iterdir() if p.name != "cache"]
        elsewhere = [p for p in elsewhere if p != stack_settings.state_dir]
        leaked += [
            f"{name}: {p}" for p in elsewhere if _read_as_service(pid, p, "ls").returncode == 0
        ]
    assert read == dict.fromkeys(orthancs, True)
    assert leaked == []
    on_host = subprocess.run(
        ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_GID}", "--clear-groups",
         "cat", *(str(s.key_ring_file) for _, s in orthancs.values())],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert on_host.returncode != 0 and on_host.stdout == ""
    assert on_host.stderr.count("Permission denied") == len(orthancs)
