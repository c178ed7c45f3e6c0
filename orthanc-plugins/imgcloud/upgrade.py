"""One-click upgrade of an edge (#15): releases side by side, a trial boot, rollback.

The releases and state.json are imgcloud.release_store's; the loader that chooses one at
each boot is imgcloud.boot. Steps, and who does each:
1. `Upgrader.check` (the fleet agent, when central orders a release): asks central what
   is ordered, downloads the bundle through the gateway with a size cap, checks its size
   and SHA-256 against the order and its signature with the configured public key
   (`release_bundle.verify_bundle`, memory only), refuses a release numbered (signed
   `sequence`) below the highest this edge ran healthy (review M3: no downgrade by an
   order or a replay), and only then unpacks it, read-only, into releases/<release>/. It
   records current=<release>, previous=<what runs>, a trial, and restarts Orthanc: a
   restart marker, then a clean shutdown (/tools/shutdown), and the supervisor starts it
   again (deploy.release supervise; in production the service manager's restart policy).
   Not /tools/reset: Orthanc 1.12.7's Python plugin 5.0 dies (SIGSEGV) finalizing the
   embedded Python with the edge loaded, at every stop, so an in-process restart ends the
   process. A refused bundle is reported and remembered (not fetched again for the same
   hash) and nothing of it is on disk.
2. `Boot` (imgcloud.boot, the stable loader, edge_plugin.py, from the installed code): at
   each plugin load chooses the release to import and re-verifies it at rest (review M4);
   rolls back a trial that already had its boot and never became healthy, a release that
   fails its check (reported refused, "tampered at rest"), and one whose import raises.
   Rolling back to the previous release is the edge's own decision, below the highest
   sequence or not.
3. `TrialCheck` (the new code): within `deadline_s` this Orthanc's REST API must answer
   and central must have taken a heartbeat. Then the trial ends (healthy, and its sequence
   becomes the floor); otherwise it rolls back and restarts into the previous release.
Reports to central (installed, healthy, rolled_back, refused) are queued in state.json and
sent by the fleet agent, so one made while central is unreachable is not lost.

Trusted: the public key file (configured, root-owned). Untrusted: everything central or
the network sends (an order only names a release and a hash, the bundle is verified
before use) and, at boot, the unpacked releases (verified again before they are run).
"""

from __future__ import annotations

import importlib.metadata
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .boot import RELEASE_MODULES as RELEASE_MODULES
from .boot import Boot as Boot
from .errors import PluginError
from .release_bundle import (
    MAX_BUNDLE_BYTES,
    BundleRefused,
    Ed25519PublicKey,
    remove_release,
    sha256_hex,
    unpack_verified,
    verify_bundle,
)
from .release_store import RESTART_MARKER as RESTART_MARKER
from .release_store import STATE as STATE
from .release_store import ReleaseStore as ReleaseStore
from .release_store import installed_release as installed_release
from .release_store import log
from .release_store import running_release as running_release
from .worker import Worker

# not fetched again when central orders them again (release_store: "refused")
NOT_AGAIN = ("rolled back", "tampered")


class UpgradeError(PluginError):
    """An upgrade step failed (reported; the edge keeps running what it runs)."""


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
            *NOT_AGAIN,
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
            floor = int(state["highest_sequence"] or 0)
            if manifest.sequence < floor:
                raise BundleRefused(
                    f"release sequence {manifest.sequence} is below {floor}, the highest "
                    "this edge ran healthy: a downgrade is not installed"
                )
            missing = missing_requirements(manifest.requirements)
            if missing:
                raise BundleRefused(f"requirements not installed: {', '.join(missing[:5])}")
            dest = self.store.root / release
            if dest.exists():  # an earlier, unfinished install of it: never run
                remove_release(dest)
            unpack_verified(data, self.public_key, dest)
        except BundleRefused as exc:
            self._refuse(state, release, digest, str(exc))
            return None

        def install(state: dict[str, Any]) -> None:
            state["previous"] = state["current"]
            state["current"] = release
            state["trial"] = {"release": release, "boots": 0, "installed_at": time.time()}
            self.store.report(state, release, "installed", f"from {self.running}")

        self.store.update(install)
        log.warning("release %s installed beside %s: restarting into it", release, self.running)
        self.restart()
        return release

    def _refuse(self, _read: dict[str, Any], release: str, digest: str, why: str) -> None:
        """Remember and report the refusal, on the state as it is now (`_read`, loaded
        before the download, may be older than what the trial check wrote since)."""
        log.error("release %s refused: %s", release, why)

        def refuse(state: dict[str, Any]) -> None:
            state["refused"][release] = digest
            self.store.report(state, release, "refused", why)

        self.store.update(refuse)


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
        if not reasons:
            sequence = self.store.sequence(self.running)

            def healthy(state: dict[str, Any]) -> None:
                state["trial"] = None
                self.store.ran_healthy(state, sequence)
                self.store.report(state, self.running, "healthy", f"after {self._age():.0f} s")

            self.store.update(healthy)
            self.store.clear_restart()
            self.outcome = "healthy"
            log.warning("release %s is healthy", self.running)
            self.ask_to_stop()
            self.decided()
        elif self._age() > self.deadline_s:
            why = f"health check failed: {'; '.join(reasons)}"[:300]
            self.store.update(lambda state: self.store.roll_back(state, why))
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
