"""Several centrals (high availability, `"Lock": false`) upgrading one PostgreSQL index at
once (docs/upgrade.md, step 5).

Orthanc 1.10.1 with PostgreSQL plugin 4.0 (the host's Debian 12 packages) writes an index
and stores a study; then two Orthanc 1.12.7 with plugin 5.0 (the launcher's way, in the
Debian 13 root) start at the same instant on it. Both must come up and serve every
instance; the index keeps schema 6 and revision 1 and gains the (empty) Labels table.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from deploy.samples.studies import make_study
from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.ports import free_port
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings

pytestmark = pytest.mark.integration

HOST_ORTHANC = Path("/usr/sbin/Orthanc")
HOST_PG_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
INSTANCES = 3


@pytest.fixture
def database() -> Iterator[tuple[StackContext, Path]]:
    """A stack's PostgreSQL alone, on a state directory of its own."""
    if not HOST_ORTHANC.exists() or not HOST_PG_PLUGIN.exists():
        pytest.skip("Debian 12's Orthanc 1.10.1 and PostgreSQL plugin 4.0 (upgraded from)")
    state = Path(tempfile.mkdtemp(prefix="upgrade-index-", dir=REPO_ROOT / "var"))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    ctx = load_context(StackSettings.from_env(str(state)))
    try:
        start_service(ctx, "postgres")
        yield ctx, state
    finally:
        stop_service(ctx, "postgres")
        shutil.rmtree(state, ignore_errors=True)


def write_config(ctx: StackContext, state: Path, name: str, plugin: Path, port: int) -> Path:
    home = state / name
    home.mkdir()
    config = {
        "Name": name,
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(state / "files"),  # shared, as S3 is between centrals
        "Plugins": [str(plugin)],
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": "127.0.0.1",
            "Port": ctx.ports["postgres"],
            "Database": "orthanc_central",
            "Username": "orthanc_central",
            "Password": ctx.secrets["db_central"],
            "Lock": False,
        },
    }
    path = home / "orthanc.json"
    path.write_text(json.dumps(config))
    return path


def wait_up(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc on {port} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return dict(httpx.get(f"http://127.0.0.1:{port}/system", timeout=2).json())
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"Orthanc on {port} not up after {timeout_s} s: {log.read_text()[-2000:]}")


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def index_facts(ctx: StackContext) -> tuple[str, str, bool]:
    """(schema version, the plugin's revision, whether the Labels table exists)."""
    dsn = (
        f"host=127.0.0.1 port={ctx.ports['postgres']} dbname=orthanc_central "
        f"user=orthanc_central password={ctx.secrets['db_central']} connect_timeout=10"
    )
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT property, value FROM GlobalProperties").fetchall()
        labels = db.execute("SELECT to_regclass('public.labels') IS NOT NULL").fetchone()
    properties = {int(key): str(value) for key, value in rows}
    return properties[1], properties[4], bool(labels and labels[0])


def test_two_centrals_upgrade_one_index_at_once(database) -> None:
    ctx, state = database
    settings = ctx.settings
    port = free_port()
    old_log = state / "old.log"
    old = subprocess.Popen(
        [str(HOST_ORTHANC), str(write_config(ctx, state, "old", HOST_PG_PLUGIN, port))],
        env={"LD_PRELOAD": str(settings.bind_shim), "PATH": "/usr/bin:/bin"},
        stdout=old_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_up(port, old, old_log)["Version"] == "1.10.1"
        for ds in make_study(7301, "CT", instances=INSTANCES).instances():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            url = f"http://127.0.0.1:{port}/instances"
            httpx.post(url, content=buffer.getvalue(), timeout=30).raise_for_status()
        old_ids = httpx.get(f"http://127.0.0.1:{port}/instances", timeout=10).json()
    finally:
        stop_all([old])
    before = index_facts(ctx)

    started: list[tuple[int, subprocess.Popen, Path]] = []
    try:
        for name in ("central-1", "central-2"):
            node_port = free_port()
            config = write_config(
                ctx, state, name, PLUGIN_DIR / "libOrthancPostgreSQLIndex.so", node_port
            )
            # its own home and the shared storage: a stack's whole state is not handed over
            argv, env = orthanc_command(settings, config, [config.parent, state / "files"])
            log = state / f"{name}.log"
            process = subprocess.Popen(
                argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
            )
            started.append((node_port, process, log))
        for node_port, process, log in started:
            system = wait_up(node_port, process, log)
            assert (system["Version"], system["DatabaseVersion"]) == ("1.12.7", 6)
            ids = httpx.get(f"http://127.0.0.1:{node_port}/instances", timeout=10).json()
            assert sorted(ids) == sorted(old_ids) and len(ids) == INSTANCES
    finally:
        stop_all([process for _, process, _ in started])

    assert before == ("6", "1", False)  # schema version, plugin revision, Labels table
    assert index_facts(ctx) == ("6", "1", True)
