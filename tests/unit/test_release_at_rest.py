"""Review M3 and M4 on the edge: a release numbered below the highest the edge ran healthy
is refused (and remembered), while its own rollback to the previous release still
happens; an installed release is verified again at every boot (signature, every payload
file's SHA-256, nothing more in payload/) and one changed at rest is rolled back before
any of its code runs; no bytecode is written into a release."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imgcloud.boot import Boot
from imgcloud.fleet_agent import FleetClient
from imgcloud.release_bundle import (
    BundleRefused,
    build_bundle,
    generate_private_key,
    remove_release,
    unpack_verified,
    verify_release_dir,
)
from imgcloud.upgrade import ReleaseStore, TrialCheck, Upgrader

from tests.unit.test_fleet_agent import FakeCentral
from tests.unit.test_upgrade import offer, release_source

KEY = generate_private_key()


@pytest.fixture
def central() -> Iterator[FakeCentral]:
    server = FakeCentral()
    yield server
    server.close()


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr("imgcloud.boot.RELEASE_MODULES", ("fakeplugin",))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "fakeplugin"]:
        del sys.modules[name]


def bundle(tmp_path: Path, name: str, sequence: int, build: str = "") -> bytes:
    src = release_source(tmp_path, f"{name}{build}", f"NAME = {name!r}\n")
    (src / "fakeplugin" / "helper.py").write_text("HELP = 1\n")
    return build_bundle(src, name, KEY, sequence=sequence)


def upgrader(tmp_path: Path, central: FakeCentral, running: str) -> Upgrader:
    store = ReleaseStore(tmp_path / "releases")
    client = FleetClient(central.api_url, None)
    return Upgrader(store, client, KEY.public_key(), running, lambda: None)


def install(tmp_path: Path, central: FakeCentral, name: str, sequence: int, running: str) -> Any:
    offer(central, name, bundle(tmp_path, name, sequence))
    up = upgrader(tmp_path, central, running)
    return up.check(), up.store


def healthy(store: ReleaseStore, release: str) -> None:
    check = TrialCheck(store, release, [lambda: None], lambda: None)
    check.work()
    assert check.outcome == "healthy"


def fakeplugin_name() -> Any:
    import fakeplugin  # type: ignore[import-not-found]

    return fakeplugin.NAME


# --- M3: no downgrade ------------------------------------------------------------------


def test_a_release_below_the_highest_run_healthy_is_refused_and_remembered(
    tmp_path: Path, central: FakeCentral
) -> None:
    assert install(tmp_path, central, "r5", 5, "installed-0.1.0")[0] == "r5"
    store = ReleaseStore(tmp_path / "releases")
    healthy(store, "r5")
    assert store.load()["highest_sequence"] == 5
    # an older signed release, ordered (or replayed) by central: refused, nothing on disk
    installed, store = install(tmp_path, central, "r3", 3, "r5")
    assert installed is None
    state = store.load()
    assert state["current"] == "r5" and state["trial"] is None
    assert not (tmp_path / "releases/r3").exists()
    refusal = state["reports"][-1]
    assert refusal["release"] == "r3" and refusal["status"] == "refused"
    assert "sequence 3 is below 5" in refusal["detail"] and "downgrade" in refusal["detail"]
    asked = len(central.upgrade_reports)
    assert upgrader(tmp_path, central, "r5").check() is None  # remembered: not fetched again
    assert len(central.upgrade_reports) == asked
    # a newer one is installed
    assert install(tmp_path, central, "r6", 6, "r5")[0] == "r6"


def test_the_edge_still_rolls_back_to_the_previous_release_on_its_own(
    tmp_path: Path, central: FakeCentral, clean_modules: None
) -> None:
    install(tmp_path, central, "r5", 5, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    healthy(store, "r5")
    install(tmp_path, central, "r7", 7, "r5")
    loader = Boot(store, lambda m: None, KEY.public_key())
    assert loader.load(fakeplugin_name) == "r7"  # its trial boot
    check = TrialCheck(store, "r7", [lambda: "no heartbeat"], lambda: None, deadline_s=-1)
    check.work()
    assert check.outcome == "rolled_back"
    state = store.load()
    assert state["current"] == "r5" and state["highest_sequence"] == 5  # r7 never healthy
    assert Boot(store, lambda m: None, KEY.public_key()).load(fakeplugin_name) == "r5"


# --- M4: verified at rest, at every boot ---------------------------------------------


def unpacked(tmp_path: Path, name: str = "r1", sequence: int = 1) -> Path:
    dest = tmp_path / "releases" / name
    unpack_verified(bundle(tmp_path, name, sequence), KEY.public_key(), dest)
    return dest


def writable(path: Path) -> None:
    """What an attacker with the edge's uid can do first (the tree is read-only)."""
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(Path(folder) / name, 0o600)


def tamper(dest: Path, how: str) -> None:
    writable(dest)
    payload = dest / "payload" / "fakeplugin"
    if how == "changed file":
        (payload / "helper.py").write_text("import os; os.system('x')\n")
    elif how == "extra file":
        (payload / "evil.py").write_text("print('x')\n")
    elif how == "bytecode cache":
        (payload / "__pycache__").mkdir()
        (payload / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"not the source")
    elif how == "missing file":
        (payload / "helper.py").unlink()
    elif how == "symlink":
        (payload / "helper.py").unlink()
        (payload / "helper.py").symlink_to("/etc/hostname")
    elif how == "manifest resigned by another key":
        (dest / "manifest.sig").write_bytes(
            generate_private_key().sign((dest / "manifest.json").read_bytes())
        )
    elif how == "manifest edited":
        manifest = (dest / "manifest.json").read_text()
        (dest / "manifest.json").write_text(manifest.replace('"sequence": 1', '"sequence": 9'))


@pytest.mark.parametrize(
    "how",
    [
        "changed file",
        "extra file",
        "bytecode cache",
        "missing file",
        "symlink",
        "manifest resigned by another key",
        "manifest edited",
    ],
)
def test_a_release_changed_at_rest_fails_its_check(tmp_path: Path, how: str) -> None:
    dest = unpacked(tmp_path)
    assert verify_release_dir(dest, KEY.public_key()).sequence == 1
    tamper(dest, how)
    with pytest.raises(BundleRefused):
        verify_release_dir(dest, KEY.public_key())


def test_a_release_in_another_releases_folder_fails_its_check(tmp_path: Path) -> None:
    dest = unpacked(tmp_path, "r1")
    os.rename(dest, dest.parent / "r9")  # state.json would name r9: it holds r1
    with pytest.raises(BundleRefused, match="holds release r1"):
        verify_release_dir(dest.parent / "r9", KEY.public_key())


def test_a_payload_file_modified_at_rest_is_rolled_back_at_boot_before_it_runs(
    tmp_path: Path, central: FakeCentral, clean_modules: None
) -> None:
    install(tmp_path, central, "r1", 1, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    healthy(store, "r1")
    install(tmp_path, central, "r2", 2, "r1")
    healthy(store, "r2")
    assert store.load()["highest_sequence"] == 2
    init = tmp_path / "releases/r2/payload/fakeplugin/__init__.py"
    writable(init.parents[2])
    init.write_text("import sys; sys.TAMPERED_RAN = True\nNAME = 'r2'\n")
    said: list[str] = []
    loader = Boot(store, said.append, KEY.public_key())
    assert loader.load(fakeplugin_name) == "r1"  # the previous release, verified too
    assert not hasattr(sys, "TAMPERED_RAN")
    assert loader.chosen == tmp_path / "releases/r1/payload"
    assert not any("releases/r2" in p for p in sys.path)
    state = store.load()
    assert (state["current"], state["previous"], state["trial"]) == ("r1", None, None)
    report = state["reports"][-1]
    assert (report["release"], report["status"]) == ("r2", "refused")
    assert report["detail"].startswith("tampered at rest: ") and "__init__.py" in report["detail"]
    assert state["refused"]["r2"] == "tampered" and state["highest_sequence"] == 2
    assert said and "r2" in said[0] and "does not match its signed hash" in said[0]
    # ordered again by central: not fetched again (a new build is)
    offer(central, "r2", bundle(tmp_path, "r2", 2, build="-again"))
    asked = len(central.upgrade_reports)
    assert upgrader(tmp_path, central, "r1").check() is None
    assert len(central.upgrade_reports) == asked
    # r1 changed too: the installed code, and nothing of either release runs
    writable(tmp_path / "releases/r1")
    (tmp_path / "releases/r1/payload/fakeplugin/extra.py").write_text("x = 1\n")
    assert Boot(store, said.append, KEY.public_key()).choose() is None
    assert store.load()["current"] is None


def test_a_release_is_imported_without_writing_bytecode_into_its_tree(
    tmp_path: Path, central: FakeCentral, clean_modules: None
) -> None:
    install(tmp_path, central, "r1", 1, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    healthy(store, "r1")
    assert Boot(store, lambda m: None, KEY.public_key()).load(fakeplugin_name) == "r1"
    import fakeplugin.helper  # type: ignore[import-not-found]  # noqa: F401 - a lazy import

    assert sys.dont_write_bytecode is True
    assert not list((tmp_path / "releases/r1").rglob("__pycache__"))
    # so the next boot finds the tree exactly as signed
    again = Boot(store, lambda m: None, KEY.public_key()).choose()
    assert again == tmp_path / "releases/r1/payload"


def test_without_the_public_key_the_installed_code_runs_and_nothing_is_rolled_back(
    tmp_path: Path, central: FakeCentral
) -> None:
    install(tmp_path, central, "r1", 1, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    healthy(store, "r1")
    before = store.load()
    said: list[str] = []
    assert Boot(store, said.append, None).choose() is None
    assert store.load() == before and "no ReleasePublicKey" in said[0]


def test_the_loader_reads_the_public_key_from_the_configuration(tmp_path: Path) -> None:
    from imgcloud.release_bundle import public_key_pem

    pem = tmp_path / "release-public.pem"
    pem.write_bytes(public_key_pem(KEY))
    section = {"ReleaseDir": str(tmp_path / "releases"), "ReleasePublicKey": str(pem)}
    loader = Boot.from_configuration({"ImagingCloud": section}, lambda m: None)
    assert loader.public_key == KEY.public_key()
    said: list[str] = []
    section["ReleasePublicKey"] = str(tmp_path / "missing.pem")
    assert Boot.from_configuration({"ImagingCloud": section}, said.append).public_key is None
    assert "ReleasePublicKey unusable" in said[0]


def test_a_read_only_release_can_be_removed(tmp_path: Path) -> None:
    dest = unpacked(tmp_path)
    remove_release(dest)
    assert not dest.exists()


# --- review of M3/M4: one writer at a time, and Orthanc always starts ------------------


def test_a_refusal_after_the_download_keeps_what_the_trial_check_wrote_meanwhile(
    tmp_path: Path, central: FakeCentral
) -> None:
    """The upgrader read the state before a download; the trial check recorded the running
    release healthy during it; the refusal must not write the older copy back."""
    install(tmp_path, central, "r2", 2, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    up = upgrader(tmp_path, central, "r2")
    read_before = store.load()  # as check() holds it while the bundle downloads
    healthy(store, "r2")  # the trial check, on its own thread, meanwhile
    up._refuse(read_before, "r3", "0" * 64, "size or SHA-256 differs from the order")
    state = store.load()
    assert state["trial"] is None and state["highest_sequence"] == 2
    assert [r["status"] for r in state["reports"]][-2:] == ["healthy", "refused"]
    assert state["refused"] == {"r3": "0" * 64}


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"trial": "x"}',
        '{"highest_sequence": "abc", "current": "r1"}',
        '{"current": "../../elsewhere/r1"}',
        '{"refused": []}',
    ],
)
def test_a_state_file_not_as_written_runs_the_installed_code_and_is_set_aside(
    tmp_path: Path, central: FakeCentral, clean_modules: None, text: str
) -> None:
    install(tmp_path, central, "r1", 1, "installed-0.1.0")
    store = ReleaseStore(tmp_path / "releases")
    (store.root / "state.json").write_text(text)
    loader = Boot(store, lambda m: None, KEY.public_key())
    assert loader.choose() is None
    assert (store.root / "state.json.invalid").read_text() == text


def test_a_state_that_cannot_be_saved_runs_the_installed_code(
    tmp_path: Path, central: FakeCentral, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, central, "r1", 1, "installed-0.1.0")  # on trial: its boot is counted
    store = ReleaseStore(tmp_path / "releases")

    def disk_full(state: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save", disk_full)
    said: list[str] = []
    assert Boot(store, said.append, KEY.public_key()).choose() is None
    assert any("installed code" in line for line in said)
