"""`make up` fails fast with one clear line, and leaves nothing running behind it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.processes import read_pid
from deploy.stack.sandbox import platform_for
from deploy.stack.settings import REPO_ROOT, StackSettings


@pytest.fixture
def state_dir() -> Iterator[Path]:
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="test-failing-stack-", dir=base))
    path.chmod(0o755)
    yield path
    subprocess.run(
        [sys.executable, "-m", "deploy.stack", "down", "--state-dir", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(path, ignore_errors=True)


def run_up(state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.stack", "up", "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def running_services(state_dir: Path) -> list[str]:
    run = state_dir / "run"
    names = [p.stem for p in run.glob("*.pid")] if run.exists() else []
    return [n for n in names if read_pid(run, n) is not None]


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_port_in_use_stops_up_with_the_port_named(state_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_up(state_dir, IMGCLOUD_PORT_POSTGRES=str(port))
    assert result.returncode == 1
    line = failure_line(result)
    assert f"postgres: port {port} (postgres) is in use" in line
    assert running_services(state_dir) == []


def test_service_never_healthy_stops_up_with_its_log(state_dir: Path) -> None:
    result = run_up(state_dir, STACK_START_TIMEOUT="0.01")
    assert result.returncode == 1
    line = failure_line(result)
    assert "postgres: not healthy after" in line
    assert f"(log: {state_dir / 'log' / 'postgres.log'})" in line
    assert running_services(state_dir) == []


def test_missing_prerequisite_stops_up_and_what_had_started(state_dir: Path) -> None:
    empty_cache = state_dir / "empty-cache"
    empty_cache.mkdir()
    root = platform_for(StackSettings.from_env()).root  # up checks the Orthanc root first
    if root is not None:
        (empty_cache / root.name).symlink_to(root)
    result = run_up(state_dir, STACK_CACHE_DIR=str(empty_cache))
    assert result.returncode == 1
    line = failure_line(result)
    assert "keycloak:" in line and "run make install" in line
    # PostgreSQL and SeaweedFS had started before Keycloak was found missing.
    assert "postgres   healthy" in result.stdout
    assert running_services(state_dir) == []
