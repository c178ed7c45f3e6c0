"""One-click upgrade of an edge (#15): releases side by side, a trial boot, rollback.

    <ReleaseDir>/state.json         {"current": "2026.12.1" | null, "previous": ...,
                                     "trial": {"release": "2026.12.1", "boots": 1} | null,
                                     "reports": [...], "refused": {...}}
    <ReleaseDir>/<release>/payload/ the plugin code (imgcloud/, glue_common.py, ...)
    <ReleaseDir>/<release>/manifest.json, manifest.sig

`current` null means the code installed with the edge (the repository's orthanc-plugins,
read-only): always there, the last fallback.

Steps, and who does each:
1. `Upgrader.check` (the fleet agent, when central orders a release): asks central what
   is ordered, downloads the bundle through the gateway with a size cap, checks its size
   and SHA-256 against the order and its signature with the configured public key
   (`release_bundle.verify_bundle`, memory only), and only then unpacks it into
   releases/<release>/. It records current=<release>, previous=<what runs>, a trial, and
   restarts Orthanc: a restart marker, then a clean shutdown (/tools/shutdown), and the
   supervisor starts it again (deploy.release supervise; in production the service
   manager's restart policy). Not /tools/reset: Orthanc 1.12.7's Python plugin 5.0 dies
   (SIGSEGV) finalizing the embedded Python with the edge loaded, at every stop, so an
   in-process restart ends the process. A refused bundle is reported and remembered
   (not fetched again for the same hash) and nothing of it is on disk.
2. `Boot` (the stable loader, edge_plugin.py, from the installed code): at each plugin
   load chooses the release to import. A trial that already had its boot and never became
   healthy (Orthanc died, or was restarted before the check passed) is rolled back here.
   If importing the chosen release raises, it rolls back at once in the same load and
   imports the previous one.
3. `TrialCheck` (the new code): within `deadline_s` this Orthanc's REST API must answer
   and central must have taken a heartbeat. Then the trial ends (healthy); otherwise it
   rolls back and restarts into the previous release.
Reports to central (installed, healthy, rolled_back, refused) are queued in state.json and
sent by the fleet agent, so one made while central is unreachable is not lost.

Trusted: the public key file (configured, root-owned), state.json and the unpacked
releases (written by this code only, in the edge's own home). Untrusted: everything
central or the network sends; an order only names a release and a hash, the bundle is
verified before use.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .errors import PluginError
from .release_bundle import (
    MANIFEST,
    MAX_BUNDLE_BYTES,
    PAYLOAD,
    BundleRefused,
    Ed25519PublicKey,
    sha256_hex,
    unpack_verified,
    verify_bundle,
)
from .worker import Worker

log = logging.getLogger(__name__)
STATE = "state.json"
# "start Orthanc again when it exits": read by whatever supervises it (deploy.release
# supervise in the local stack; systemd's or compose's restart policy restarts anyway)
RESTART_MARKER = "restart-requested"
RELEASE_MODULES = ("imgcloud", "glue_common")  # what a release replaces in sys.modules
MAX_REPORTS = 50


class UpgradeError(PluginError):
    """An upgrade step failed (reported; the edge keeps running what it runs)."""


def installed_release() -> str:
    return f"installed-{__version__}"


def running_release(package_file: str) -> str:
    """The release the running code came from: the manifest beside its payload/, or the
    installed code's name. `package_file` is imgcloud/__init__.py's path."""
    payload = Path(package_file).resolve().parents[1]
    manifest = payload.parent / MANIFEST
    if payload.name == PAYLOAD and manifest.is_file():
        return str(json.loads(manifest.read_text())["release"])
    return installed_release()


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The pinned `name==version` requirements this Python does not have (an edge cannot
    install packages: the platform's environment must already hold a release's)."""
    missing = []
    for line in requirements:
        pin = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$", line)
        if pin is None:
            continue  # markers or ranges: not checked here
        try:
            found = importlib.metadata.version(pin.group(1))
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != pin.group(2):
            missing.append(f"{pin.group(1)}=={pin.group(2)} (here: {found or 'none'})")
    return missing


class ReleaseStore:
    """state.json and the release folders (one writer: this edge's process)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load(self) -> dict[str, Any]:
        try:
            state = json.loads((self.root / STATE).read_text())
        except FileNotFoundError:
            state = {}
        defaults: dict[str, Any] = {
            "current": None,
            "previous": None,
            "trial": None,
            "reports": [],
            "refused": {},
        }
        return defaults | state

    def save(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{STATE}.tmp"
        with open(tmp, "w") as out:
            json.dump(state, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / STATE)

    def request_restart(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RESTART_MARKER).write_text("")

    def clear_restart(self) -> None:
        (self.root / RESTART_MARKER).unlink(missing_ok=True)

    def payload(self, release: str | None) -> Path | None:
        """Where a release's code is (None: the installed code)."""
        if release is None:
            return None
        path = self.root / release / PAYLOAD
        return path if path.is_dir() else None

    def report(self, state: dict[str, Any], release: str, status: str, detail: str = "") -> None:
        """Queue a report for central (sent by the fleet agent; bounded)."""
        state["reports"] = [
            *state["reports"][-(MAX_REPORTS - 1) :],
            {"release": release, "status": status, "detail": detail[:500]},
        ]

    def roll_back(self, state: dict[str, Any], reason: str) -> None:
        """The trial release goes: current back to previous, reported rolled_back."""
        trial = state["trial"] or {"release": state["current"]}
        log.error("release %s rolled back: %s", trial["release"], reason)
        self.report(state, str(trial["release"]), "rolled_back", reason)
        state["refused"][str(trial["release"])] = "rolled back"
        state["current"], state["previous"], state["trial"] = state["previous"], None, None

    def take_reports(self) -> list[dict[str, Any]]:
        return list(self.load()["reports"])

    def reported(self, count: int) -> None:
        """The first `count` queued reports reached central."""
        state = self.load()
        state["reports"] = state["reports"][count:]
        self.save(state)


class Boot:
    """The loader's choice at one plugin load (edge_plugin.py runs it from the installed
    code, before any release is imported)."""

    def __init__(self, store: ReleaseStore, logger: Callable[[str], None] = log.warning) -> None:
        self.store = store
        self.logger = logger
        self.chosen: Path | None = None

    @classmethod
    def from_configuration(
        cls, configuration: dict[str, Any], logger: Callable[[str], None]
    ) -> Boot:
        section = configuration.get("ImagingCloud") or {}
        root = section.get("ReleaseDir") or Path(str(section.get("QueueFile", "."))).parent / (
            "releases"
        )
        return cls(ReleaseStore(Path(root)), logger)

    def choose(self) -> Path | None:
        """The payload folder to import (None: the installed code); counts a trial's boot
        and rolls back a trial that already had one."""
        if not (self.store.root / STATE).exists():
            return None
        state = self.store.load()
        trial = state["trial"]
        if trial is not None:
            if trial.get("boots", 0) >= 1:
                self.store.roll_back(state, "not healthy after its first start")
            else:
                trial["boots"] = 1
                self.store.request_restart()  # if it kills Orthanc: one more start, rolled back
        chosen = self.store.payload(state["current"])
        if state["current"] is not None and chosen is None:
            self.store.roll_back(state, "its folder is missing")
            chosen = self.store.payload(state["current"])
        self.store.save(state)
        self.chosen = chosen
        return chosen

    def activate(self, payload: Path | None) -> None:
        """Make `payload` the code that `import imgcloud` finds (the installed code stays
        on PYTHONPATH behind it, and is what runs for None)."""
        for entry in [p for p in sys.path if Path(p).parent.parent == self.store.root]:
            sys.path.remove(entry)
        if payload is None:
            return
        sys.path.insert(0, str(payload))
        for name in list(sys.modules):
            if name.split(".")[0] in RELEASE_MODULES:
                del sys.modules[name]

    def load(self, imports: Callable[[], Any]) -> Any:
        """Choose, activate, run `imports`; if the chosen release cannot be imported, roll
        back now and import the previous one (or the installed code)."""
        payload = self.choose()
        self.activate(payload)
        try:
            return imports()
        except Exception as exc:
            if payload is None:
                raise
            state = self.store.load()
            self.store.roll_back(state, f"import failed: {type(exc).__name__}: {exc}"[:300])
            self.store.save(state)
            self.logger(f"imaging-cloud: release at {payload} failed to load, rolled back")
            self.chosen = self.store.payload(state["current"])
            self.activate(self.chosen)
            if self.chosen is None:  # the installed code again: forget the release's modules
                for name in list(sys.modules):
                    if name.split(".")[0] in RELEASE_MODULES:
                        del sys.modules[name]
            return imports()


class FleetUpgrades(Protocol):
    """What the upgrader needs of central (imgcloud.fleet_agent.FleetClient)."""

    def upgrade_order(self) -> dict[str, Any] | None: ...

    def bundle(self, release: str, max_bytes: int) -> bytes: ...

    def report_upgrade(self, release: str, status: str, detail: str) -> None: ...


class Upgrader:
    """Fetches, verifies and installs an ordered release, then restarts into it."""

    def __init__(
        self,
        store: ReleaseStore,
        central: FleetUpgrades,
        public_key: Ed25519PublicKey | None,
        running: str,
        restart: Callable[[], None],
    ) -> None:
        self.store = store
        self.central = central
        self.public_key = public_key
        self.running = running
        self.restart = restart

    def check(self) -> str | None:
        """Look at central's order and act on it; returns the release installed, if any."""
        order = self.central.upgrade_order()
        if not order:
            return None
        release, digest = str(order.get("release", "")), str(order.get("sha256", "")).lower()
        size = int(order.get("size") or 0)
        state = self.store.load()
        if release in (self.running, state["current"]) or state["refused"].get(release) in (
            digest,
            "rolled back",
        ):
            return None  # runs already, or refused before: not fetched again
        if self.public_key is None:
            self._refuse(state, release, digest, "no ReleasePublicKey configured")
            return None
        if not 0 < size <= MAX_BUNDLE_BYTES:
            self._refuse(state, release, digest, f"ordered size {size} out of bounds")
            return None
        self.central.report_upgrade(release, "downloading", "")
        data = self.central.bundle(release, size)
        try:
            if len(data) != size or sha256_hex(data) != digest:
                raise BundleRefused("size or SHA-256 differs from the order")
            manifest = verify_bundle(data, self.public_key)
            if manifest.release != release:
                raise BundleRefused(f"bundle holds release {manifest.release}, not {release}")
            missing = missing_requirements(manifest.requirements)
            if missing:
                raise BundleRefused(f"requirements not installed: {', '.join(missing[:5])}")
            dest = self.store.root / release
            if dest.exists():  # an earlier, unfinished install of it: never run
                shutil.rmtree(dest)
            unpack_verified(data, self.public_key, dest)
        except BundleRefused as exc:
            self._refuse(state, release, digest, str(exc))
            return None
        state = self.store.load()
        state["previous"] = state["current"]
        state["current"] = release
        state["trial"] = {"release": release, "boots": 0, "installed_at": time.time()}
        self.store.report(state, release, "installed", f"from {self.running}")
        self.store.save(state)
        log.warning("release %s installed beside %s: restarting into it", release, self.running)
        self.restart()
        return release

    def _refuse(self, state: dict[str, Any], release: str, digest: str, why: str) -> None:
        log.error("release %s refused: %s", release, why)
        state["refused"][release] = digest
        self.store.report(state, release, "refused", why)
        self.store.save(state)


Check = Callable[[], str | None]  # None when healthy, else why not


class TrialCheck(Worker):
    """The new release proves itself: every check passes within `deadline_s` of its start,
    or it rolls back and restarts. Nothing to do when the running release is not on trial."""

    name = "imgcloud-trial"

    def __init__(
        self,
        store: ReleaseStore,
        running: str,
        checks: Sequence[Check],
        restart: Callable[[], None],
        *,
        deadline_s: float = 60.0,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        decided: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(every_s=every_s)
        self.decided = decided  # e.g. the fleet agent's notify: the report goes now
        self.store = store
        self.running = running
        self.checks = list(checks)
        self.restart = restart
        self.deadline_s = deadline_s
        self.clock = clock
        self.started = clock()
        self.outcome: str | None = None  # healthy | rolled_back, once decided

    def on_trial(self) -> bool:
        trial = self.store.load()["trial"]
        return trial is not None and trial.get("release") == self.running

    def work(self) -> bool:
        if self.outcome is not None:
            return False
        if not self.on_trial():
            self.outcome = "not on trial"
            self.ask_to_stop()
            return False
        reasons = [r for r in (self._run(check) for check in self.checks) if r]
        state = self.store.load()
        if not reasons:
            state["trial"] = None
            self.store.report(state, self.running, "healthy", f"after {self._age():.0f} s")
            self.store.save(state)
            self.store.clear_restart()
            self.outcome = "healthy"
            log.warning("release %s is healthy", self.running)
            self.ask_to_stop()
            self.decided()
        elif self._age() > self.deadline_s:
            self.store.roll_back(state, f"health check failed: {'; '.join(reasons)}"[:300])
            self.store.save(state)
            self.outcome = "rolled_back"
            self.ask_to_stop()
            self.restart()
        return False

    def _age(self) -> float:
        return self.clock() - self.started

    @staticmethod
    def _run(check: Check) -> str | None:
        try:
            return check()
        except Exception as exc:  # a check that raises has failed
            return f"{type(exc).__name__}"
