"""Start, track (PID files) and stop the stack's native processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def pid_file(run_dir: Path, service: str) -> Path:
    return run_dir / f"{service}.pid"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def read_pid(run_dir: Path, service: str) -> int | None:
    """The recorded PID of a service if that very process is still alive.

    The PID file holds the PID and the process's start time: after a reboot or a long
    time, the same PID may belong to an unrelated process, which `down` must never signal.
    """
    path = pid_file(run_dir, service)
    try:
        recorded = path.read_text().split()
        pid, started = int(recorded[0]), recorded[1]
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if _start_time(pid) == started else None


def spawn(
    service: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    redact_log: bool = False,
) -> int:
    """Start a process in its own session (so its children stop with it); record its PID.

    Every file the process creates is private (umask 077), and so is its log (0600).
    With redact_log, its output goes through deploy.stack.logredact on its way to the log.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {argv[0]}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if redact_log else out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            user=user,
            group=user,
            umask=0o077,
        )
    if redact_log:
        assert proc.stdout is not None
        # Its own session: the service's stop signals do not reach it; it ends at EOF.
        subprocess.Popen(
            [sys.executable, "-m", "deploy.stack.logredact", str(log)],
            stdin=proc.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parents[2]),
            start_new_session=True,
            umask=0o077,
        )
        proc.stdout.close()
    pid_file(run_dir, service).write_text(f"{proc.pid} {_start_time(proc.pid)}")
    return proc.pid


def exited(pid: int) -> bool:
    """True if the process has exited (reaping it if it is our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return ") Z " in Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True


def stop(
    run_dir: Path,
    service: str,
    *,
    sig: int = signal.SIGTERM,
    timeout_s: float = 30.0,
) -> bool:
    """Stop a recorded service: `sig` to its process group, then SIGKILL after timeout_s.

    Returns True if something was running.
    """
    pid = read_pid(run_dir, service)
    path = pid_file(run_dir, service)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited(pid):
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not exited(pid):
            time.sleep(0.1)
    # The group may hold helpers that outlived the leader (e.g. Keycloak's JVM under kc.sh).
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    path.unlink(missing_ok=True)
    return True
