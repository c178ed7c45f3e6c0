"""Edge releases (#15): the platform's release key pair, and signed bundles of the plugin
code (imgcloud.release_bundle).

    python -m deploy.release keygen                    # once per stack (or platform)
    python -m deploy.release build 2026.12.1 -o FILE   # the current orthanc-plugins/, signed
    python -m deploy.release build 2026.12.1 -o FILE --sequence N
    python -m deploy.release verify FILE               # what an edge checks, before use
    python -m deploy.release supervise --marker M -- ORTHANC_ARGV...

`supervise` is what the local stack starts for an edge: it runs Orthanc and starts it
again when it exits while the marker file exists (the edge plugin writes it before it
shuts Orthanc down into an upgrade or a rollback, and for a trial boot, so a release that
kills Orthanc gets one more start, in which the loader rolls it back). Any other exit, or
a signal to the supervisor (the launcher's stop and kill signal the whole process group),
ends it with Orthanc's status. At most MAX_RESTARTS in RESTART_WINDOW_S.

The private key stays in the stack's state directory (release/release-key.pem, 0600, in a
0700 folder), never on an edge; edges and central get the public key
(release/release-public.pem). A bundle records the pinned requirements of
requirements.lock: the environment the plugins' Python runs (the Orthanc root's venv is
installed from it), which an edge checks before it installs a release.

Every bundle carries a release number, `sequence`, inside the signed manifest (review M3:
an edge refuses one below the highest it ran healthy). `build` takes it (`--sequence`)
or derives it: the clock in milliseconds, and always above the last one built with this
key (release/last-sequence), so numbers increase from build to build even within a
millisecond or after the clock went back. A given one must be above the last too.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from imgcloud.release_bundle import (
    MAX_SEQUENCE,
    BundleRefused,
    build_bundle,
    clock_sequence,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    sha256_hex,
    verify_bundle,
)

from .stack.settings import REPO_ROOT, StackSettings

MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def key_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "release"


def ensure_key_pair(state_dir: Path) -> tuple[Path, Path]:
    """(private, public) key files under the state directory, generated once."""
    folder = key_dir(state_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    private, public = folder / "release-key.pem", folder / "release-public.pem"
    if not private.exists():
        key = generate_private_key()
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private_key_pem(key))
    if not public.exists():
        public.write_bytes(public_key_pem(load_private_key(private.read_bytes())))
    return private, public


def pinned_requirements(lock: Path) -> list[str]:
    """The `name==version` lines of a uv/pip lock file."""
    return [line for line in lock.read_text().splitlines() if PIN.match(line.strip())]


class SequenceError(ValueError):
    """A release number that does not go above the last one built."""


def next_sequence(state_dir: Path, given: int | None = None) -> int:
    """The sequence of the next build: `given`, or derived from the clock; either way
    above the last one built with this state directory's key."""
    last_file = key_dir(state_dir) / "last-sequence"
    last = int(last_file.read_text()) if last_file.exists() else 0
    if given is None:
        return max(clock_sequence(), last + 1)
    if not last < given <= MAX_SEQUENCE:
        raise SequenceError(f"sequence {given}: must be above {last}, the last one built")
    return given


def build(
    state_dir: Path, release: str, src: Path | None = None, sequence: int | None = None
) -> bytes:
    """A signed bundle of `src` (default: orthanc-plugins/), numbered above every earlier
    build (the number is recorded once the bundle is built)."""
    private, _ = ensure_key_pair(state_dir)
    number = next_sequence(state_dir, sequence)
    data = build_bundle(
        src or REPO_ROOT / "orthanc-plugins",
        release,
        load_private_key(private.read_bytes()),
        sequence=number,
        requirements=pinned_requirements(REPO_ROOT / "requirements.lock"),
    )
    (key_dir(state_dir) / "last-sequence").write_text(f"{number}\n")
    return data


def supervise(
    argv: Sequence[str], marker: Path, *, max_restarts: int = MAX_RESTARTS, say=print
) -> int:
    """Run argv; again while it exits with `marker` present (the marker is removed at each
    restart). Returns the exit status to pass on (128 + signal for a signalled child)."""
    stopping: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    marker.unlink(missing_ok=True)  # left by an earlier run: not a request to this one
    restarts: list[float] = []
    while True:
        child = subprocess.Popen(list(argv))
        status = child.wait()
        if stopping or not marker.exists():
            return status if status >= 0 else 128 - status
        marker.unlink(missing_ok=True)
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(restarts) > max_restarts:
            say(f"supervise: {len(restarts)} restarts within {RESTART_WINDOW_S:.0f} s: giving up")
            return 1
        say(f"supervise: exited with {status}, restart requested: starting again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.release", description=__doc__)
    parser.add_argument("--state-dir", type=Path, help="default: the stack's (STACK_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("keygen", help="generate the release key pair (once)")
    building = commands.add_parser("build", help="build and sign a bundle of orthanc-plugins/")
    building.add_argument("release")
    building.add_argument("-o", "--out", type=Path, required=True)
    building.add_argument("--src", type=Path, help="default: the repository's orthanc-plugins/")
    building.add_argument(
        "--sequence", type=int, help="the release number (default: from the clock, above the last)"
    )
    checking = commands.add_parser("verify", help="verify a bundle with the public key")
    checking.add_argument("bundle", type=Path)
    supervising = commands.add_parser("supervise", help="run an edge Orthanc, restart on request")
    supervising.add_argument("--marker", type=Path, required=True)
    supervising.add_argument("child", nargs=argparse.REMAINDER, help="-- ORTHANC_ARGV...")
    args = parser.parse_args(argv)
    if args.command == "supervise":
        child = args.child[1:] if args.child[:1] == ["--"] else args.child
        if not child:
            parser.error("supervise: the command to run goes after --")
        return supervise(child, args.marker, say=lambda m: print(m, flush=True))
    state = args.state_dir or StackSettings.from_env().state_dir
    if args.command == "keygen":
        private, public = ensure_key_pair(state)
        print(f"release key: {private}\npublic key:  {public}")
        return 0
    if args.command == "build":
        try:
            data = build(state, args.release, args.src, args.sequence)
        except SequenceError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        args.out.write_bytes(data)
        print(f"{args.out}: release {args.release}, {len(data)} bytes, sha256 {sha256_hex(data)}")
        return 0
    _, public = ensure_key_pair(state)
    try:
        manifest = verify_bundle(args.bundle.read_bytes(), load_public_key(public.read_bytes()))
    except BundleRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(
        f"release {manifest.release} (sequence {manifest.sequence}): "
        f"{len(manifest.files)} files, signature valid"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
