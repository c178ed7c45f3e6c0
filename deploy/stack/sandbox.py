"""Where Orthanc comes from: Debian 13's packages (Orthanc 1.12, Python plugin 5.0 with
Python 3.13, DICOMweb 1.20, PostgreSQL 5.0), on every host.

- A Debian 13 host runs them as installed (`deploy/install.sh` installs them with apt).
- A Debian 12 host (the development machines, CI) cannot: their binaries need GLIBC 2.38.
  `deploy/platform/orthanc-root.sh` builds a Debian 13 root under the cache (once per
  pinned package list), and each Orthanc runs inside it: a private mount namespace
  (`unshare --mount`), the root mounted read-only over itself, the repository and the
  cache read-only at their own paths inside it, the stack's state directory hidden under an
  empty tmpfs, and only this Orthanc's own folders bound back into it; then `chroot` and
  `setpriv`. The process the launcher records is Orthanc itself (every step execs the
  next), so its signals reach Orthanc directly; the mounts exist only in its namespace and
  vanish with it, so nothing stays mounted on the host after `make down`.

Every Orthanc in the root runs as the service uid/gid 10042:10042 (the compose image's, see
`deploy/compose/orthanc/Dockerfile`), with no supplementary groups and no_new_privs. No
user of that number exists on the host or in the root (whose `orthanc` is uid 100, another
user): the numbers are used, never a name. The folders Orthanc writes are handed to that
uid when its command is built (`give_to_service`); everything else it sees is read-only.
On a Debian 13 host Orthanc still runs as root (not done yet).
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PrerequisiteMissing
from .settings import StackSettings

ROOT_SCRIPT = "deploy/platform/orthanc-root.sh"
INSIDE_VENV = Path("/opt/imgcloud-venv")
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
# The uid/gid every Orthanc runs as: the compose image's (deploy/compose/orthanc/Dockerfile).
SERVICE_UID = SERVICE_GID = 10042


def debian_major(os_release: Path = Path("/etc/os-release")) -> int:
    """The host's Debian release (0 when it is not Debian)."""
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_ID":
            return int(value.strip('"') or 0)
    return 0


@dataclass(frozen=True)
class OrthancPlatform:
    """How to run Orthanc here: `root` is the Debian 13 root, or None on a Debian 13
    host. Paths (binary, plugins, Python libraries) are as Orthanc sees them."""

    root: Path | None
    host_venv: Path

    @classmethod
    def detect(cls, repo_root: Path, cache_dir: Path, host_venv: Path) -> OrthancPlatform:
        if debian_major() >= 13:
            return cls(None, host_venv)
        try:
            found = subprocess.run(
                ["bash", str(repo_root / ROOT_SCRIPT), "--path", str(cache_dir)],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except subprocess.TimeoutExpired as exc:
            raise PrerequisiteMissing("orthanc", f"{ROOT_SCRIPT} --path: {exc}") from exc
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or "").strip().splitlines()
            why = said[-1] if said else f"exit status {exc.returncode}"
            raise PrerequisiteMissing("orthanc", f"{ROOT_SCRIPT} --path: {why}") from exc
        return cls(Path(found).resolve(), host_venv)

    @property
    def python_site(self) -> Path:
        venv = INSIDE_VENV if self.root else self.host_venv
        return venv / "lib" / "python3.13" / "site-packages"

    def visible(self, inside: Path) -> Path:
        """Where a path of Orthanc's file system is on the host (for checks)."""
        return self.root / inside.relative_to("/") if self.root else inside

    def check(self) -> None:
        """PrerequisiteMissing naming what is missing (run make install)."""
        if self.root is not None and not (self.root / ".complete").exists():
            raise self.root_missing()
        for inside in (ORTHANC_BIN, PLUGIN_DIR / "libOrthancPython.so", self.python_site):
            if not self.visible(inside).exists():
                raise PrerequisiteMissing(
                    "orthanc", f"{self.visible(inside)} not found: run make install"
                )

    def root_missing(self) -> PrerequisiteMissing:
        """The error for a root not built for this package list: it names the expected
        root, any root built for another list (never used instead), and the log of a
        build of this one that failed."""
        assert self.root is not None
        others = sorted(
            p.name
            for p in self.root.parent.glob("orthanc-root-*")
            if p != self.root and p.is_dir() and (p / ".complete").exists()
        )
        besides = f" (built for another package list, not used: {', '.join(others)})"
        log = self.root.with_name(self.root.name + ".log")
        return PrerequisiteMissing(
            "orthanc",
            f"Orthanc root for this package list not built: {self.root}"
            f"{besides if others else ''}: run make install",
            log if log.exists() else None,
        )

    def versions(self) -> dict[str, str]:
        """Debian package versions in the root (package -> version); {} on a host."""
        if self.root is None:
            return {}
        pairs = (line.split("=", 1) for line in (self.root / ".versions").read_text().split())
        return dict(pairs)

    def command(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        read_only: list[Path],
        writable: list[Path],
        hidden: Sequence[Path] = (),
    ) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) that run `argv` with `env` on this platform: in the root, as
        the service uid, with `read_only` and `writable` folders bound at their own paths,
        `hidden` folders covered by an empty read-only tmpfs first (what is bound inside
        them comes back, nothing else does)."""
        if self.root is None:
            # Not done: on a Debian 13 host Orthanc still runs as root, unconfined (its key
            # folder is behind keys/, 0700 root, and there is no namespace to show it alone).
            return argv, env
        drop = [f"--reuid={SERVICE_UID}", f"--regid={SERVICE_GID}", "--clear-groups"]
        return self._sandboxed(
            ["/usr/bin/setpriv", *drop, "--no-new-privs", "/usr/bin/env", "-i"]
            + [f"{k}={v}" for k, v in sorted(env.items())]
            + argv,
            read_only,
            writable,
            list(hidden),
        )

    def _sandboxed(
        self, inner: list[str], read_only: list[Path], writable: list[Path], hidden: list[Path]
    ) -> tuple[list[str], dict[str, str]]:
        assert self.root is not None
        root = shlex.quote(str(self.root))

        def at(path: Path) -> str:
            return shlex.quote(str(self.root) + str(path))

        kinds = {p: "ro" for p in read_only} | {p: "hide" for p in hidden}
        kinds |= {p: "rw" for p in writable}
        # Parents first: a hidden folder's tmpfs goes on before what is bound inside it.
        targets = sorted(kinds, key=lambda p: p.parts)
        # The root's own directories on the way to a mount point (made 0700 by older
        # launchers, under umask 077) must let the service uid through.
        covered = [*targets, Path("/tmp"), Path("/proc"), Path("/dev")]  # noqa: S108
        on_disk = {
            parent
            for target in targets
            for parent in target.parents
            if parent != Path("/") and not any(parent.is_relative_to(c) for c in covered)
        }
        steps = [
            "set -e",
            "umask 022",  # mount points the service uid can pass through
            f"mount --bind {root} {root}",
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /dev {root}/dev",
            f"mount -t tmpfs -o mode=1777,size=256m tmpfs {root}/tmp",  # noqa: S108
        ]
        for path in targets:  # mount points made first: the root is still writable
            steps += [f"mkdir -p {at(path)}"]
            if kinds[path] == "hide":
                steps += [f"mount -t tmpfs -o mode=0755,size=1m tmpfs {at(path)}"]
            else:
                steps += [f"mount --bind {shlex.quote(str(path))} {at(path)}"]
            if kinds[path] == "ro":
                steps += [f"mount -o remount,bind,ro {at(path)}"]
        steps += [f"chmod go+x {at(path)}" for path in sorted(on_disk)]
        steps += [f"mount -o remount,ro {at(p)}" for p in targets if kinds[p] == "hide"]
        steps += [f"mount -o remount,bind,ro {root}", "umask 077"]
        steps += [f"exec chroot {root} {shlex.join(inner)}"]
        outer = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(steps)]
        return outer, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def give_to_service(*paths: Path) -> None:
    """Hand `paths` and everything below them to the service uid/gid (idempotent: a state
    written by an older, root-run Orthanc is taken over on its next start). Only root's
    files change hands, never another service's; a whole stack's state is refused."""
    for top in paths:
        if (top / "ports.json").exists():
            raise ValueError(f"{top} holds a whole stack's state, not one Orthanc's")
        every = [str(top)]
        for folder, dirs, files in os.walk(top):  # symbolic links are not followed
            every += [os.path.join(folder, name) for name in [*dirs, *files]]
        for path in every:
            try:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, SERVICE_UID, SERVICE_GID)
            except FileNotFoundError:
                continue


@functools.cache
def _platform(repo_root: Path, cache_dir: Path, venv: Path) -> OrthancPlatform:
    return OrthancPlatform.detect(repo_root, cache_dir, venv)


def platform_for(settings: StackSettings) -> OrthancPlatform:
    """This host's Orthanc platform (detected once per process)."""
    return _platform(settings.repo_root, settings.cache_dir.resolve(), settings.venv_bin.parent)


def orthanc_command(
    settings: StackSettings,
    config: Path,
    writable: list[Path],
    extra_env: dict[str, str] | None = None,
    private: Sequence[Path] = (),
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that start Orthanc with `config` on this platform, as the
    service uid: its plugins' code and libraries on PYTHONPATH, the loopback shim preloaded
    (Orthanc 1.12.7 has no bind address), `writable` the only folders it may write (its
    state), `private` folders it may only read (its key ring). Both are handed to the
    service uid here; the rest of the stack's state directory (and of var/) is hidden."""
    assert writable, "Orthanc needs a folder to write its state in"
    platform = platform_for(settings)
    give_to_service(*writable, *private)
    # Orthanc starts with a clean environment; the stack's own IMGCLOUD_* settings (the
    # integration tests' fault-injection hook among them) go through.
    passed = {k: v for k, v in os.environ.items() if k.startswith("IMGCLOUD_")}
    env = {
        **passed,
        "LD_PRELOAD": str(settings.bind_shim),
        "PYTHONPATH": f"{settings.repo_root / 'orthanc-plugins'}:{platform.python_site}",
        "LC_ALL": "C.UTF-8",
        "HOME": str(writable[0]),
        **(extra_env or {}),
    }
    argv = [str(ORTHANC_BIN), str(config)]
    shared = {settings.repo_root, settings.cache_dir.resolve(), settings.bind_shim.parent.resolve()}
    stacks = {settings.state_dir.resolve(), (settings.repo_root / "var").resolve()}
    return platform.command(
        argv,
        env,
        read_only=sorted(shared | set(private)),
        writable=writable,
        # The state directory, and var/ of the repository (the default stack and any
        # nested test stack, which the repository's bind would show) if they exist.
        hidden=sorted({p for p in stacks if p.is_dir()}),
    )
