"""Bad input to the Debian 13 root and to the Orthancs run in it stops in bounded time with
one line naming what failed and its log, and leaves nothing half-built, mounted or running:
a root build whose mirror is unreachable, a cache that holds only a root built for another
package list, and an Orthanc that cannot start inside the root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.errors import PrerequisiteMissing
from deploy.stack.processes import read_pid
from deploy.stack.sandbox import ROOT_SCRIPT, OrthancPlatform, debian_major, platform_for
from deploy.stack.settings import REPO_ROOT, StackSettings

on_debian_12 = pytest.mark.skipif(
    debian_major() >= 13, reason="a Debian 13 host runs Orthanc without a root"
)


def root_path(cache: Path, **env: str) -> Path:
    """Where orthanc-root.sh expects the root for this package list in `cache`."""
    found = subprocess.run(
        ["bash", str(REPO_ROOT / ROOT_SCRIPT), "--path", str(cache)],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    return Path(found)


def failure_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "FAILED" in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="test-bad-platform-", dir=base))
    path.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    yield path
    subprocess.run(
        [sys.executable, "-m", "deploy.stack", "down", "--state-dir", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(path, ignore_errors=True)


def run_up(state_dir: Path, timeout_s: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.stack", "up", "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def running_services(state_dir: Path) -> list[str]:
    run = state_dir / "run"
    names = [p.stem for p in run.glob("*.pid")] if run.exists() else []
    return [n for n in names if read_pid(run, n) is not None]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names `text` (e.g. a stack's state directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def host_mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


@on_debian_12
def test_a_root_build_from_an_unreachable_mirror_fails_fast_and_leaves_no_root(
    tmp_path: Path,
) -> None:
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip("building a root needs debootstrap and root (make install)")
    cache = tmp_path / "cache"  # never var/cache: its root stays as it is
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{closed.getsockname()[1]}/debian"
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(REPO_ROOT / ROOT_SCRIPT), str(cache)],
            env=os.environ | {"ORTHANC_ROOT_MIRROR": mirror},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 60, f"the failed build took {elapsed:.0f} s"
    assert result.stdout == ""  # no root path printed
    root = root_path(cache, ORTHANC_ROOT_MIRROR=mirror)
    log = root.with_name(root.name + ".log")
    line = failure_line(result.stderr)
    assert line == f"[orthanc-root] FAILED: debootstrap trixie from {mirror} (log: {log})"
    assert result.stderr.strip() == line
    assert f"{mirror}/dists/trixie" in log.read_text()
    # Nothing half-built is left to be taken for a root, and nothing stays mounted.
    assert sorted(p.name for p in cache.iterdir()) == [log.name]
    assert host_mounts_under(cache) == []
    # The launcher refuses that cache, naming the root it wanted and the failed build's log.
    platform = OrthancPlatform(root.resolve(), REPO_ROOT / ".venv")
    with pytest.raises(PrerequisiteMissing) as refused:
        platform.check()
    assert refused.value.one_line() == (
        f"orthanc: Orthanc root for this package list not built: {root.resolve()}: "
        f"run make install (log: {log.resolve()})"
    )


@on_debian_12
def test_up_refuses_a_cache_holding_only_a_root_for_another_package_list(
    state_dir: Path,
) -> None:
    real_root = platform_for(StackSettings.from_env()).root
    assert real_root is not None and (real_root / ".complete").exists(), "run make install"
    cache = state_dir / "cache"
    cache.mkdir()
    # A complete, working root, but under another package list's key: it must not be used.
    other = cache / "orthanc-root-000000000000"
    other.symlink_to(real_root)
    started = time.monotonic()
    result = run_up(state_dir, 60, STACK_CACHE_DIR=str(cache))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 20, f"up took {elapsed:.0f} s to refuse"
    expected = root_path(cache)
    assert expected != other
    line = failure_line(result.stderr)
    assert line == (
        f"make up FAILED: orthanc: Orthanc root for this package list not built: {expected} "
        f"(built for another package list, not used: {other.name}): run make install"
    )
    assert "healthy" not in result.stdout  # refused before anything started
    assert running_services(state_dir) == []


@on_debian_12
def test_an_orthanc_that_cannot_start_in_the_root_stops_up_and_leaves_nothing(
    state_dir: Path,
) -> None:
    root = platform_for(StackSettings.from_env()).root
    assert root is not None
    # Edge A's SQLite index is not a database: its Orthanc exits inside the root.
    index = state_dir / "edge-a" / "storage" / "index"
    index.parent.mkdir(parents=True)
    index.write_bytes(b"this is not an SQLite database\n" * 64)
    started = time.monotonic()
    timeout_s = 120
    result = run_up(state_dir, 8 * timeout_s, STACK_START_TIMEOUT=str(timeout_s))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "central    healthy" in result.stdout, result.stdout  # it came that far
    line = failure_line(result.stderr)
    log = state_dir / "log" / "edge-a.log"
    assert line == f"make up FAILED: edge-a: exited during start-up (log: {log})"
    assert "SQLite" in log.read_text()
    assert elapsed < 6 * timeout_s
    # No Orthanc (nor anything else) of this stack runs, and no mount of the root is left.
    assert running_services(state_dir) == []
    assert processes_mentioning(str(state_dir)) == []
    assert host_mounts_under(root) == []
