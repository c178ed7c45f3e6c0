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

Written by this edge's process only, in the edge's own home; its threads (the upgrader,
the trial check, the fleet agent's reports) change it through `update`, one at a time
under one lock, each from the state as it is then (never a copy read before a download).
A state.json that is not what this code writes (unreadable, wrong types, a release name
that is not one) is set aside as state.json.invalid and the installed code runs. It is not a
security boundary against the edge's own uid: whoever can write here can also change
what `current` names; the code itself is re-verified at each boot (imgcloud.boot).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .release_bundle import MANIFEST, PAYLOAD, RELEASE

log = logging.getLogger("imgcloud.upgrade")
STATE = "state.json"
# "start Orthanc again when it exits": read by whatever supervises it (deploy.release
# supervise in the local stack; systemd's or compose's restart policy restarts anyway)
RESTART_MARKER = "restart-requested"
MAX_REPORTS = 50
MAX_SEQUENCE = 2**63 - 1
_LOCK = threading.RLock()  # one edge per process: every ReleaseStore shares it
T = TypeVar("T")


def _release_name(value: object) -> bool:
    return value is None or (isinstance(value, str) and re.match(RELEASE, value) is not None)


def valid_state(state: object) -> bool:
    """Whether `state` has the shape this code writes (names that are release names)."""
    if not isinstance(state, dict):
        return False
    trial = state.get("trial")
    sequence = state.get("highest_sequence", 0)
    return (
        _release_name(state.get("current"))
        and _release_name(state.get("previous"))
        and (
            trial is None
            or (
                isinstance(trial, dict)
                and _release_name(trial.get("release"))
                and isinstance(trial.get("boots", 0), int)
            )
        )
        and isinstance(sequence, int)
        and not isinstance(sequence, bool)
        and 0 <= sequence <= MAX_SEQUENCE
        and isinstance(state.get("reports", []), list)
        and all(isinstance(r, dict) for r in state.get("reports", []))
        and isinstance(state.get("refused", {}), dict)
    )


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
        path = self.root / STATE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            state = None
            log.error("release state unreadable (%s): the installed code runs", type(exc).__name__)
        if not valid_state(state):
            if state is not None:
                log.error("release state is not valid: set aside, the installed code runs")
            with _LOCK:
                try:
                    os.replace(path, path.with_name(STATE + ".invalid"))
                except OSError:
                    pass
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

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Load, `change` and save the state in one step, one thread at a time."""
        with _LOCK:
            state = self.load()
            result = change(state)
            self.save(state)
            return result

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
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            sequence = min(max(sequence, 0), MAX_SEQUENCE)
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

        def drop(state: dict[str, Any]) -> None:
            state["reports"] = state["reports"][count:]

        self.update(drop)
