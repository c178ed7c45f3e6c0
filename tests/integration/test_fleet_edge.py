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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgcloud.release_bundle import (
    build_bundle,
    generate_private_key,
    public_key_pem,
    unpack_verified,
)
from imgcloud.storage.keyring import KeyRing, write_key_ring
from imgcloud.upgrade import RESTART_MARKER, ReleaseStore, installed_release

from deploy.stack.ports import free_port
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings
from tests.integration.test_fleet_central import ctx, quick  # noqa: F401 - fixtures

KEY = generate_private_key()
USER = ("fleet-test", "fleet-test-password")


class Edge:
    """One edge Orthanc with the repository's edge plugin and nothing else of a stack."""

    def __init__(self, home: Path, keys: Path) -> None:
        self.home, self.keys = home, keys
        self.port = free_port()
        ring = keys / "keyring.json"
        write_key_ring(KeyRing.generate("k1"), ring)
        public = keys / "release-public.pem"  # the loader verifies a release with it
        public.write_bytes(public_key_pem(KEY))
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
                        "ReleasePublicKey": str(public),
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


def test_a_release_changed_at_rest_is_rolled_back_at_boot_and_none_of_it_runs(
    edge: Edge, tmp_path: Path
) -> None:
    """Review M4: the loader verifies the release at every boot, before it imports it."""
    settings = StackSettings.from_env()
    install(edge, "2026.12.1", REPO_ROOT / "orthanc-plugins", trial=False)
    changed = edge.releases.root / "2026.12.1/payload/imgcloud/edge_app.py"
    for folder in (changed.parent, changed.parents[1], changed.parents[2]):
        folder.chmod(0o700)  # read-only as unpacked; its owner can change that
    changed.chmod(0o600)
    with open(changed, "a") as out:
        out.write("\nraise SystemExit('the changed code ran')\n")
    edge.start(settings)
    assert edge.status()["release"] == installed_release()  # the installed code answers
    state = edge.releases.load()
    assert state["current"] is None and state["refused"]["2026.12.1"] == "tampered"
    report = state["reports"][-1]
    assert report["status"] == "refused" and "edge_app.py" in report["detail"]
    assert report["detail"].startswith("tampered at rest")
    log = (edge.home.parent / "orthanc.log").read_text(errors="replace")
    assert "fails its check at boot" in log and "the changed code ran" not in log


def test_a_verified_release_runs_and_writes_no_bytecode_into_its_tree(
    edge: Edge, tmp_path: Path
) -> None:
    settings = StackSettings.from_env()
    install(edge, "2026.12.1", REPO_ROOT / "orthanc-plugins", trial=False)
    edge.start(settings)
    assert edge.status()["release"] == "2026.12.1"
    assert not list((edge.releases.root / "2026.12.1").rglob("__pycache__"))
    edge.restart()  # and the next boot finds it as signed
    assert edge.status()["release"] == "2026.12.1"
    assert edge.releases.load()["current"] == "2026.12.1"


# --- the stack's own edges against central's fleet routes ---------------------------
# (a second indexer node with the stack's release public key takes the release upload:
# test_fleet_central's `quick`, imported above; the stack's node keeps its defaults)

GATEWAY_A = "gateway-h0001"
HEARTBEAT_S = 30.0  # the edges' FleetHeartbeatSeconds (the default)


def until(check: Any, timeout_s: float, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


@pytest.fixture(scope="module")
def admin(stack: Any, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with stack.gateway(tokens["admin"]) as client:
        yield client


def edge_status(stack: Any) -> dict[str, Any]:
    try:
        with stack.orthanc("EDGE_A") as edge_a:
            answer = edge_a.get("/imaging-cloud/status")
    except httpx.HTTPError:
        return {}
    return dict(answer.json()) if answer.status_code == 200 else {}


def test_the_edge_heartbeats_what_it_runs(stack: Any, admin: httpx.Client) -> None:
    running = edge_status(stack)["release"]

    def seen() -> dict[str, Any] | None:
        gateway = admin.get(f"/api/v1/fleet/gateways/{GATEWAY_A}")
        beat = gateway.json().get("heartbeat") if gateway.status_code == 200 else None
        # edge A's own (another test may have sent one as its gateway account meanwhile)
        return gateway.json() if beat and beat.get("software_version") == running else None

    gateway = until(seen, 2 * HEARTBEAT_S + 10)
    assert gateway, "no heartbeat from edge A"
    beat = gateway["heartbeat"]
    assert beat["software_version"] == edge_status(stack)["release"]
    assert beat["orthanc_version"].startswith("1.12") and "python" in beat["plugins"]
    assert beat["cert_expiry"]["ca"] > "2026" and beat["disk_free_bytes"] > 0
    assert not gateway["stale"]


def test_a_rules_change_at_central_is_in_force_within_two_intervals(
    stack: Any, admin: httpx.Client
) -> None:
    before = edge_status(stack)["rules_version"]
    put_at = time.monotonic()
    put = admin.put(
        f"/api/v1/fleet/gateways/{GATEWAY_A}/rules",
        json={"document": {"compression": "jpeg-ls-lossless", "push_poll_seconds": 11}},
    )
    assert put.status_code == 201, put.text
    version = put.json()["version"]
    assert version > before
    applied = until(lambda: edge_status(stack).get("rules_version") == version, 2 * HEARTBEAT_S)
    took = time.monotonic() - put_at
    assert applied, f"version {version} not in force on edge A after {took:.0f} s"
    print(f"rules version {version} in force on edge A {took:.2f} s after the PUT")
    record = until(
        lambda: admin.get(f"/api/v1/fleet/gateways/{GATEWAY_A}").json()["rules_applied"] == version,
        2 * HEARTBEAT_S,
    )
    assert record, "central does not know the version applied"
    # valid for central's schema, refused by the edge (an AE title it has no entry for)
    pull = {"name": "nowhere", "source_aet": "NOT_CONFIGURED", "every_minutes": 5}
    put = admin.put(
        f"/api/v1/fleet/gateways/{GATEWAY_A}/rules", json={"document": {"pacs_pulls": [pull]}}
    )
    assert put.status_code == 201, put.text
    refused = put.json()["version"]

    def refusal() -> dict[str, Any] | None:
        gateway = admin.get(f"/api/v1/fleet/gateways/{GATEWAY_A}").json()
        return gateway if gateway["rules_refused"] == refused else None

    gateway = until(refusal, 2 * HEARTBEAT_S)
    assert gateway and "NOT_CONFIGURED" in gateway["rules_refused_reason"]
    assert edge_status(stack)["rules_version"] == version  # the last good one stays


def test_a_one_click_upgrade_while_a_study_forwards_loses_and_duplicates_nothing(
    stack: Any,
    admin: httpx.Client,
    quick: str,  # noqa: F811 - the fixture
    tokens: dict[str, str],
) -> None:
    import random

    from deploy.release import build
    from deploy.samples.studies import make_study
    from deploy.stack.client import find_study, wait_for_instances

    registered = until(  # by its first heartbeat (when this test runs alone)
        lambda: admin.get(f"/api/v1/fleet/gateways/{GATEWAY_A}").status_code == 200,
        2 * HEARTBEAT_S + 10,
    )
    assert registered, "edge A never heartbeated"
    state = Path(stack["STACK_DIR"])
    release = f"2026.12.{int(time.time())}-test"
    bundle = build(state, release)
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=quick, headers=headers, timeout=60) as up:
        stored = up.post("/api/v1/fleet/releases", content=bundle)
        assert stored.status_code == 201, stored.text
    before = edge_status(stack)["release"]
    slices = 40
    study = make_study(
        random.randrange(100_000, 900_000),  # noqa: S311 - fresh per run
        "CT",
        instances=slices,
        institution_code=stack["EDGE_A_INSTITUTION"],
    )
    sent = stack.send_to_edge("A", study.instances())
    assert sent.ok and sent.sent == slices, sent.failed
    order = {"release": release, "target": {"gateways": [GATEWAY_A]}}
    started = admin.post("/api/v1/fleet/upgrades", json=order)
    assert started.status_code == 201, started.text
    campaign = started.json()["id"]
    ordered_at = time.monotonic()

    def finished() -> str | None:
        watched = admin.get(f"/api/v1/fleet/upgrades/{campaign}").json()
        status = watched["gateways"][0]["status"]
        return status if status in ("healthy", "rolled_back", "refused") else None

    outcome = until(finished, 2 * HEARTBEAT_S + 120, every_s=1.0)
    took = time.monotonic() - ordered_at
    print(f"upgrade {before} -> {release}: {outcome} {took:.0f} s after the order")
    assert outcome == "healthy", outcome
    assert edge_status(stack)["release"] == release
    uid = study.exam.study_instance_uid
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        study_id = wait_for_instances(central, uid, slices, timeout_s=120)
        time.sleep(3)  # anything sent twice would be there by now
        instances = central.get(f"/studies/{study_id}/instances").json()
        assert find_study(central, uid) == study_id
    sops = [i["MainDicomTags"]["SOPInstanceUID"] for i in instances]
    assert len(sops) == slices == len(set(sops))
    assert sorted(sops) == sorted(str(ds.SOPInstanceUID) for ds in study.instances())
