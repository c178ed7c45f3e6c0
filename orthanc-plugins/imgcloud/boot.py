"""The edge's stable loader (#15): at each plugin load, which release to import.

edge_plugin.py runs `Boot.load` from the installed code (the repository's
orthanc-plugins, root-owned and read-only), before any release is imported. It chooses
state.json's `current` release and re-verifies it at rest (review M4,
`release_bundle.verify_release_dir`): its manifest's signature with the configured
public key, and the SHA-256 of every payload file, with nothing more in payload/ (a
`__pycache__` is refused too: Python would run its bytecode instead of the checked
source). A release that fails is rolled back to the previous one, which is checked the
same way, down to the installed code; it is reported `refused` ("tampered at rest: ...")
and not installed again. A trial that already had its boot and never became healthy is
rolled back; a release whose import raises is rolled back within the same load.

Before a release is imported, `sys.dont_write_bytecode` is set, so the process writes no
.pyc into the (read-only) release tree. The check is at load time: code a release imports
later, lazily, is read then; the tree is 0400/0500, and its owner is the edge's uid.

Trusted: the public key file named by ImagingCloud.ReleasePublicKey (root-owned), and the
installed code. Not trusted: anything under ReleaseDir, state.json included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .release_bundle import (
    BundleRefused,
    Ed25519PublicKey,
    load_public_key,
    verify_release_dir,
)
from .release_store import STATE, ReleaseStore, log

RELEASE_MODULES = ("imgcloud", "glue_common")  # what a release replaces in sys.modules


class Boot:
    """The loader's choice at one plugin load."""

    def __init__(
        self,
        store: ReleaseStore,
        logger: Callable[[str], None] = log.warning,
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.store = store
        self.logger = logger
        self.public_key = public_key
        self.chosen: Path | None = None

    @classmethod
    def from_configuration(
        cls, configuration: dict[str, Any], logger: Callable[[str], None]
    ) -> Boot:
        section = configuration.get("ImagingCloud") or {}
        root = section.get("ReleaseDir") or Path(str(section.get("QueueFile", "."))).parent / (
            "releases"
        )
        key = None
        if section.get("ReleasePublicKey"):
            try:
                key = load_public_key(Path(section["ReleasePublicKey"]).read_bytes())
            except (OSError, BundleRefused) as exc:
                logger(f"imaging-cloud: ImagingCloud.ReleasePublicKey unusable: {exc}")
        return cls(ReleaseStore(Path(root)), logger, key)

    def choose(self) -> Path | None:
        """The payload folder to import (None: the installed code); counts a trial's boot,
        rolls back a trial that already had one, and any release that fails its check.
        Whatever goes wrong here (a state it cannot read or write, a full disk) runs the
        installed code: Orthanc always starts."""
        try:
            return self._choose()
        except Exception as exc:
            self.logger(f"imaging-cloud: release choice failed ({exc!r}): the installed code")
            self.chosen = None
            return None

    def _choose(self) -> Path | None:
        if not (self.store.root / STATE).exists():
            return None
        state = self.store.load()
        before = json.dumps(state, sort_keys=True)
        if state["current"] is not None and self.public_key is None:
            # a configuration problem, not a verdict on the release: the installed code
            # runs until the key is back, and state.json is left as it is
            self.logger("imaging-cloud: no ReleasePublicKey: running the installed code")
            return None
        trial = state["trial"]
        if trial is not None:
            if trial.get("boots", 0) >= 1:
                self.store.roll_back(state, "not healthy after its first start")
            else:
                trial["boots"] = 1
                self.store.request_restart()  # if it kills Orthanc: one more start, rolled back
        chosen = self._verified(state)
        if json.dumps(state, sort_keys=True) != before:
            self.store.save(state)  # fails: the installed code runs (choose), not unrecorded
        self.chosen = chosen
        return chosen

    def _verified(self, state: dict[str, Any]) -> Path | None:
        """The payload of `current` once it verifies at rest, rolling back (and saying
        why) until one does or the installed code is left (None). Changes `state`."""
        while state["current"] is not None:
            release = str(state["current"])
            payload = self.store.payload(release)
            if payload is None:
                self.store.roll_back(state, "its folder is missing")
                continue
            if self.public_key is None:  # cannot be checked: not run (choose() says so)
                return None
            try:
                manifest = verify_release_dir(payload.parent, self.public_key)
            except BundleRefused as exc:
                self.store.roll_back(
                    state, f"tampered at rest: {exc}", status="refused", remembered="tampered"
                )
                self.logger(f"imaging-cloud: release {release} fails its check at boot: {exc}")
                continue
            if state["trial"] is None:  # not on trial: it ran healthy before
                self.store.ran_healthy(state, manifest.sequence)
            return payload
        return None

    def activate(self, payload: Path | None) -> None:
        """Make `payload` the code that `import imgcloud` finds (the installed code stays
        on PYTHONPATH behind it, and is what runs for None)."""
        for entry in [p for p in sys.path if Path(p).parent.parent == self.store.root]:
            sys.path.remove(entry)
        if payload is None:
            return
        sys.dont_write_bytecode = True  # no .pyc into the verified tree, ever
        sys.path.insert(0, str(payload))
        self._forget_release_modules()

    @staticmethod
    def _forget_release_modules() -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in RELEASE_MODULES:
                del sys.modules[name]

    def load(self, imports: Callable[[], Any]) -> Any:
        """Choose, activate, run `imports`; if the chosen release cannot be imported, roll
        back now and import the previous one (verified too), or the installed code."""
        payload = self.choose()
        self.activate(payload)
        try:
            return imports()
        except Exception as exc:
            if payload is None:
                raise
            why = f"import failed: {type(exc).__name__}: {exc}"[:300]
            try:
                state = self.store.load()
                self.store.roll_back(state, why)
                self.chosen = self._verified(state)
                self.store.save(state)
            except Exception as failed:  # the installed code, whatever the state says
                self.logger(f"imaging-cloud: rolling back failed ({failed!r})")
                self.chosen = None
            self.logger(f"imaging-cloud: release at {payload} failed to load, rolled back")
            self.activate(self.chosen)
            if self.chosen is None:  # the installed code again: forget the release's modules
                self._forget_release_modules()
            return imports()
