"""An edge's installed releases and their state (#15): state.json beside the releases.

    <ReleaseDir>/state.json         {"current": "2026.12.1" | null, "previous": ...,
                                     "trial": {"release": "2026.12.1", "boots": 1} | null,
                                     "highest_sequence": 1765170000123,
                                     "reports": [...], "refused": {...}}
    <ReleaseDir>/<release>/payload/ the plugin code (imgcloud/, glue_common.py, ...)
    <ReleaseDir>/<release>/manifest.json, manifest.sig

`current` null means the code installed with the edge (the repository's orthanc-plugins,
read-only): always there, the last fallback. `highest_sequence` is the highest release
number (the signed manifest's `sequence`) this edge ran healthy: the upgrader refuses a
release below it (review M3). `refused` maps a release to why it is not installed again:
the refused bundle's SHA-256, "rolled back" or "tampered".

Written by this edge's process only (one writer), in the edge's own home. It is not a
security boundary against the edge's own uid: whoever can write here can also change
what `current` names; the code itself is re-verified at each boot (imgcloud.boot).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import __version__
from .release_bundle import MANIFEST, PAYLOAD

log = logging.getLogger("imgcloud.upgrade")
STATE = "state.json"
# "start Orthanc again when it exits": read by whatever supervises it (deploy.release
# supervise in the local stack; systemd's or compose's restart policy restarts anyway)
RESTART_MARKER = "restart-requested"
MAX_REPORTS = 50


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
            "highest_sequence": 0,
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

    def sequence(self, release: str) -> int | None:
        """The sequence in an unpacked release's manifest (read as it is on disk: callers
        use it for a release the loader verified at this boot), None if there is none."""
        try:
            value = json.loads((self.root / release / MANIFEST).read_text()).get("sequence")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) else None

    @staticmethod
    def ran_healthy(state: dict[str, Any], sequence: int | None) -> None:
        """A release numbered `sequence` ran healthy: nothing below it is installed again."""
        if sequence is not None:
            state["highest_sequence"] = max(int(state.get("highest_sequence") or 0), sequence)

    def report(self, state: dict[str, Any], release: str, status: str, detail: str = "") -> None:
        """Queue a report for central (sent by the fleet agent; bounded)."""
        state["reports"] = [
            *state["reports"][-(MAX_REPORTS - 1) :],
            {"release": release, "status": status, "detail": detail[:500]},
        ]

    def roll_back(
        self,
        state: dict[str, Any],
        reason: str,
        *,
        status: str = "rolled_back",
        remembered: str = "rolled back",
    ) -> None:
        """The current (or trial) release goes: current back to previous, reported with
        `status` and remembered in `refused` (not installed again)."""
        trial = state["trial"] or {"release": state["current"]}
        log.error("release %s %s: %s", trial["release"], status.replace("_", " "), reason)
        self.report(state, str(trial["release"]), status, reason)
        state["refused"][str(trial["release"])] = remembered
        state["current"], state["previous"], state["trial"] = state["previous"], None, None

    def take_reports(self) -> list[dict[str, Any]]:
        return list(self.load()["reports"])

    def reported(self, count: int) -> None:
        """The first `count` queued reports reached central."""
        state = self.load()
        state["reports"] = state["reports"][count:]
        self.save(state)
