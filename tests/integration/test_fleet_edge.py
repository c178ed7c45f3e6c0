"""The edge's release loader in a real Orthanc (the platform's, in its sandbox): an
unpacked, verified release is what the plugin runs; the supervisor the stack starts an
edge under starts Orthanc again after a requested shutdown and the loader chooses again;
a trial release that did not prove healthy is rolled back at that boot; a release that
cannot be imported is rolled back within its load and the installed code answers.

The edge here runs alone (no central: its fleet agent needs the gateway account, so no
heartbeat and no trial check run); the heartbeat, rules and upgrade against central's
routes are tested once those routes exist (indexer/api/routes/fleet.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgcloud.release_bundle import build_bundle, generate_private_key, unpack_verified
from imgcloud.storage.keyring import KeyRing, write_key_ring
from imgcloud.upgrade import RESTART_MARKER, ReleaseStore, installed_release

from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings

KEY = generate_private_key()
USER = ("fleet-test", "fleet-test-password")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Edge:
    """One edge Orthanc with the repository's edge plugin and nothing else of a stack."""

    def __init__(self, home: Path, keys: Path) -> None:
        self.home, self.keys = home, keys
        self.port = free_port()
        ring = keys / "keyring.json"
        write_key_ring(KeyRing.generate("k1"), ring)
        static = json.loads((REPO_ROOT / "edge-orthanc/orthanc.json").read_text())
        static.pop("DicomWeb", None)
        static.pop("ImagingCloud", None)
        self.config = home / "orthanc.json"
        self.config.write_text(
            json.dumps(
                static
                | {
                    "HttpPort": self.port,
                    "DicomPort": free_port(),
                    "DicomAet": "EDGE_T",
                    "StorageDirectory": str(home / "storage"),
                    "IndexDirectory": str(home / "storage"),
                    "RemoteAccessAllowed": False,
                    "RegisteredUsers": {USER[0]: USER[1]},
                    "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
                    "PythonScript": str(REPO_ROOT / "orthanc-plugins/edge_plugin.py"),
                    "DicomModalities": {},
                    "OrthancPeers": {"central": {"Url": "http://127.0.0.1:9/", "Username": "u"}},
                    "ImagingCloud": {
                        "Role": "edge",
                        "Institution": "H0001",
                        "ForwardPeer": "central",
                        "QueueFile": str(home / "forward-queue.sqlite"),
                        "ReleaseDir": str(home / "releases"),
                        "Storage": {
                            "Backend": "filesystem",
                            "KeyRingFile": str(ring),
                            "Filesystem": {"Root": str(home / "objects")},
                        },
                    },
                }
            )
        )
        self.releases = ReleaseStore(home / "releases")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, settings: StackSettings) -> None:
        """Under the supervisor, as the stack starts an edge (EdgeOrthanc.argv)."""
        argv, env = orthanc_command(settings, self.config, [self.home], private=[self.keys])
        marker = self.releases.root / RESTART_MARKER
        supervised = [str(settings.venv_bin / "python"), "-m", "deploy.release", "supervise"]
        supervised += ["--marker", str(marker), "--", *argv]
        log = open(self.home.parent / "orthanc.log", "ab")
        self.proc = subprocess.Popen(
            supervised,
            env=os.environ | env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def status(self, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, "Orthanc exited"
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{self.port}/imaging-cloud/status", auth=USER, timeout=2
                )
                if answer.status_code == 200:
                    return dict(answer.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the edge plugin did not answer")

    def restart(self) -> None:
        """What imgcloud.edge_app.EdgeApp.restart does: the marker, a clean shutdown."""
        self.releases.request_restart()
        answer = httpx.post(f"http://127.0.0.1:{self.port}/tools/shutdown", auth=USER, timeout=10)
        assert answer.status_code == 200
        deadline = time.monotonic() + 30
        while (self.releases.root / RESTART_MARKER).exists():  # the supervisor took it
            assert time.monotonic() < deadline, "Orthanc was not started again"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # as the launcher stops a service
            self.proc.wait(30)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    home, keys = tmp_path / "edge", tmp_path / "keys"
    home.mkdir()
    keys.mkdir()
    one = Edge(home, keys)
    yield one
    one.stop()


def install(edge: Edge, release: str, src: Path, *, trial: bool) -> None:
    """What imgcloud.upgrade.Upgrader.check leaves after a verified download."""
    data = build_bundle(src, release, KEY)
    unpack_verified(data, KEY.public_key(), edge.releases.root / release)
    state = edge.releases.load()
    state["previous"], state["current"] = state["current"], release
    state["trial"] = {"release": release, "boots": 0} if trial else None
    edge.releases.save(state)


def broken_copy(tmp_path: Path) -> Path:
    """The plugin code with a module that cannot be imported."""
    import shutil

    src = tmp_path / "broken"
    shutil.copytree(
        REPO_ROOT / "orthanc-plugins", src, ignore=shutil.ignore_patterns("__pycache__")
    )
    with open(src / "imgcloud/edge_app.py", "a") as out:
        out.write("\nraise ImportError('this release is broken')\n")
    return src


def test_the_loader_runs_the_release_and_a_restart_rolls_an_unproven_trial_back(
    edge: Edge, tmp_path: Path
) -> None:
    settings = StackSettings.from_env()
    install(edge, "2026.12.1", REPO_ROOT / "orthanc-plugins", trial=True)
    edge.start(settings)
    assert edge.status()["release"] == "2026.12.1"  # imported from releases/2026.12.1
    pid = edge.proc.pid if edge.proc else 0
    # No trial check ran (no central): the restart is the trial's second boot
    edge.restart()
    assert edge.status()["release"] == installed_release()
    assert edge.proc is not None and edge.proc.pid == pid and edge.proc.poll() is None
    state = edge.releases.load()
    assert state["current"] is None and state["reports"][-1]["status"] == "rolled_back"


def test_a_release_that_cannot_be_imported_is_rolled_back_in_its_load(
    edge: Edge, tmp_path: Path
) -> None:
    settings = StackSettings.from_env()
    install(edge, "2026.12.1", REPO_ROOT / "orthanc-plugins", trial=False)
    install(edge, "2026.12.2", broken_copy(tmp_path), trial=True)
    edge.start(settings)
    assert edge.status()["release"] == "2026.12.1"
    state = edge.releases.load()
    assert (state["current"], state["trial"]) == ("2026.12.1", None)
    assert "this release is broken" in state["reports"][-1]["detail"]
