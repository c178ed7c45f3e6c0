"""The edge's upgrade: an ordered, signed release is downloaded from (a stand-in of)
central over real HTTP, verified, installed beside the running code and restarted into;
a tampered one is refused with nothing of it on disk or imported; a release that cannot
be imported, or does not become healthy, is rolled back by the edge on its own; the
forwarding queue carries a study being sent across the restart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imgcloud.fleet_agent import FleetClient
from imgcloud.forward_queue import ForwardQueue
from imgcloud.release_bundle import build_bundle, generate_private_key, sha256_hex
from imgcloud.upgrade import Boot, ReleaseStore, TrialCheck, Upgrader, running_release

from deploy.release import pinned_requirements
from tests.unit.test_fleet_agent import FakeCentral

KEY = generate_private_key()


@pytest.fixture
def central() -> Iterator[FakeCentral]:
    server = FakeCentral()
    yield server
    server.close()


def release_source(tmp_path: Path, name: str, init: str) -> Path:
    """A tiny stand-in release: a package whose import says which release it is."""
    src = tmp_path / f"src-{name}"
    (src / "fakeplugin").mkdir(parents=True)
    (src / "fakeplugin" / "__init__.py").write_text(init)
    return src


def offer(central: FakeCentral, release: str, data: bytes, digest: str | None = None) -> None:
    central.bundles[release] = data
    central.order = {"release": release, "sha256": digest or sha256_hex(data), "size": len(data)}


def upgrader(tmp_path: Path, central: FakeCentral, restarts: list[str], **kw: Any) -> Upgrader:
    return Upgrader(
        ReleaseStore(tmp_path / "releases"),
        FleetClient(central.api_url, None),
        kw.pop("public_key", KEY.public_key()),
        kw.pop("running", "installed-0.1.0"),
        lambda: restarts.append("restart"),
    )


def test_an_ordered_release_is_verified_installed_and_restarted_into(
    tmp_path: Path, central: FakeCentral
) -> None:
    pins = pinned_requirements(Path(__file__).parents[2] / "requirements.lock")
    src = release_source(tmp_path, "new", "NAME = 'new'\n")
    data = build_bundle(src, "2026.12.1", KEY, requirements=pins)  # as deploy.release does
    offer(central, "2026.12.1", data)
    restarts: list[str] = []
    up = upgrader(tmp_path, central, restarts)
    assert up.check() == "2026.12.1"
    assert restarts == ["restart"]
    state = up.store.load()
    assert (state["current"], state["previous"]) == ("2026.12.1", None)
    assert state["trial"]["release"] == "2026.12.1" and state["trial"]["boots"] == 0
    payload = tmp_path / "releases/2026.12.1/payload"
    assert (payload / "fakeplugin/__init__.py").read_text() == "NAME = 'new'\n"
    assert running_release(str(payload / "fakeplugin/__init__.py")) == "2026.12.1"
    assert [r["status"] for r in central.upgrade_reports] == ["downloading"]
    assert [r["status"] for r in state["reports"]] == ["installed"]  # sent with a heartbeat
    assert up.check() is None and restarts == ["restart"]  # installed already: nothing again


@pytest.mark.parametrize(
    "how", ["other key", "hash differs from the order", "no key configured", "requirements"]
)
def test_a_refused_bundle_leaves_nothing_on_disk_and_runs_nothing(
    tmp_path: Path, central: FakeCentral, how: str
) -> None:
    evil = release_source(tmp_path, "evil", "import sys; sys.EVIL_RAN = True\n")
    key = generate_private_key() if how == "other key" else KEY
    needs = ["httpx==0.0.1"] if how == "requirements" else []
    data = build_bundle(evil, "2026.12.9", key, requirements=needs)
    offer(central, "2026.12.9", data, digest="0" * 64 if "hash" in how else None)
    restarts: list[str] = []
    public = None if how == "no key configured" else KEY.public_key()
    up = upgrader(tmp_path, central, restarts, public_key=public)
    assert up.check() is None
    assert restarts == []
    releases = tmp_path / "releases"
    assert sorted(p.name for p in releases.iterdir()) == ["state.json"]  # no file of it
    state = up.store.load()
    assert state["current"] is None and state["trial"] is None
    assert state["reports"][-1]["status"] == "refused"
    if how == "requirements":
        assert "httpx==0.0.1" in state["reports"][-1]["detail"]
    assert not hasattr(sys, "EVIL_RAN") and "fakeplugin" not in sys.modules
    before = len(central.upgrade_reports)
    assert up.check() is None  # the same order again: not fetched again
    assert len(central.upgrade_reports) == before


def installed(tmp_path: Path, central: FakeCentral, name: str, init: str) -> ReleaseStore:
    offer(central, name, build_bundle(release_source(tmp_path, name, init), name, KEY))
    up = upgrader(tmp_path, central, [])
    assert up.check() == name
    return up.store


def fakeplugin_name() -> Any:
    import fakeplugin  # type: ignore[import-not-found]

    return fakeplugin.NAME


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "fakeplugin"]:
        del sys.modules[name]


def boot(store: ReleaseStore, monkeypatch: pytest.MonkeyPatch) -> Boot:
    monkeypatch.setattr("imgcloud.boot.RELEASE_MODULES", ("fakeplugin",))
    return Boot(store, lambda message: None, KEY.public_key())


def test_the_loader_imports_the_current_release_and_rolls_back_a_second_unhealthy_boot(
    tmp_path: Path, central: FakeCentral, monkeypatch: pytest.MonkeyPatch, clean_modules: None
) -> None:
    store = installed(tmp_path, central, "r1", "NAME = 'r1'\n")
    assert boot(store, monkeypatch).load(fakeplugin_name) == "r1"  # the trial's boot
    assert store.load()["trial"]["boots"] == 1
    # Orthanc died (or restarted) before r1 proved healthy: the next load rolls back
    assert boot(store, monkeypatch).choose() is None  # the installed code
    state = store.load()
    assert state["current"] is None and state["trial"] is None
    assert state["reports"][-1]["status"] == "rolled_back"


def test_a_release_that_cannot_be_imported_is_rolled_back_in_the_same_load(
    tmp_path: Path, central: FakeCentral, monkeypatch: pytest.MonkeyPatch, clean_modules: None
) -> None:
    store = installed(tmp_path, central, "r1", "NAME = 'r1'\n")
    state = store.load()
    state["trial"] = None  # r1 proved healthy
    store.save(state)
    installed(tmp_path, central, "r2", "raise ImportError('broken release')\n")
    loader = boot(store, monkeypatch)
    assert loader.load(fakeplugin_name) == "r1"  # the previous release, in the same load
    assert loader.chosen == tmp_path / "releases/r1/payload"
    assert not any("releases/r2" in p for p in sys.path)
    state = store.load()
    assert (state["current"], state["trial"]) == ("r1", None)
    assert state["reports"][-1]["status"] == "rolled_back"
    assert "broken release" in state["reports"][-1]["detail"]
    assert state["refused"]["r2"] == "rolled back"  # not installed again on the next order


def test_the_trial_check_ends_the_trial_when_healthy(tmp_path: Path, central: FakeCentral) -> None:
    store = installed(tmp_path, central, "r1", "NAME = 'r1'\n")
    restarts: list[str] = []
    decided: list[str] = []
    check = TrialCheck(
        store,
        "r1",
        [lambda: None],
        lambda: restarts.append("x"),
        decided=lambda: decided.append("now"),
    )
    check.work()
    assert check.outcome == "healthy" and restarts == [] and decided == ["now"]
    state = store.load()
    assert state["trial"] is None and state["current"] == "r1"
    assert state["reports"][-1]["status"] == "healthy"


def test_a_release_that_fails_its_health_check_rolls_back_and_restarts(
    tmp_path: Path, central: FakeCentral
) -> None:
    store = installed(tmp_path, central, "r1", "NAME = 'r1'\n")
    now = [0.0]
    restarts: list[str] = []
    check = TrialCheck(
        store,
        "r1",
        [lambda: None, lambda: "central has not taken a heartbeat yet"],
        lambda: restarts.append("x"),
        deadline_s=30,
        clock=lambda: now[0],
    )
    check.work()
    assert check.outcome is None and store.load()["current"] == "r1"  # still within its time
    now[0] = 31.0
    check.work()
    assert check.outcome == "rolled_back" and restarts == ["x"]
    state = store.load()
    assert state["current"] is None and state["trial"] is None
    assert "heartbeat" in state["reports"][-1]["detail"]


def test_a_study_being_sent_when_the_edge_restarts_goes_on_after_it(tmp_path: Path) -> None:
    """The queue is the one SQLite file both releases open: a study the old release was
    sending is due again in the new one, and the instances central confirmed stay
    confirmed, so they are not sent twice (central also stores each SOP instance once)."""
    path = tmp_path / "forward-queue.sqlite"
    old = ForwardQueue(path)
    old.enqueue("s1")
    old.mark_sending("s1")
    old.remember("s1", [("i1", "1.2.1", "a" * 64), ("i2", "1.2.2", "b" * 64)])
    old.confirm(["i1"])
    del old  # the restart: the old release's objects are gone
    new = ForwardQueue(path)
    assert new.next_due() == "s1"
    assert new.known("s1") == {"i1": ("1.2.1", "a" * 64, True), "i2": ("1.2.2", "b" * 64, False)}


def supervisor(marker: Path) -> list[str]:
    return [sys.executable, "-m", "deploy.release", "supervise", "--marker", str(marker), "--"]


def test_the_supervisor_restarts_orthanc_only_when_asked(tmp_path: Path) -> None:
    """deploy.release supervise: an exit with the marker present starts the command again
    (the marker removed); an exit without it ends the supervisor with its status."""
    import subprocess

    runs, marker = tmp_path / "runs", tmp_path / "restart-requested"
    script = (
        "import pathlib, sys; r = pathlib.Path(sys.argv[1]); n = len(r.read_text()) "
        "if r.exists() else 0; r.write_text('x' * (n + 1)); "
        "n == 0 and pathlib.Path(sys.argv[2]).write_text(''); sys.exit(3 if n == 0 else 7)"
    )
    done = subprocess.run(
        [*supervisor(marker), sys.executable, "-c", script, str(runs), str(marker)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert runs.read_text() == "xx" and not marker.exists()
    assert done.returncode == 7 and "restart requested" in done.stdout


def test_a_signal_to_the_supervisor_stops_orthanc_and_nothing_restarts(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    marker, started = tmp_path / "restart-requested", tmp_path / "started"
    marker.write_text("")  # even with a restart requested: a stop is a stop
    script = (
        "import pathlib, sys, time; p = pathlib.Path(sys.argv[1]); "
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); time.sleep(60)"
    )
    proc = subprocess.Popen([*supervisor(marker), sys.executable, "-c", script, str(started)])
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the supervisor alone: it passes it on
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert started.read_text() == "x"
