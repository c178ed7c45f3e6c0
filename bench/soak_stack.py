"""The memory soak's stacks (#11): a commit's files exported from git and started by that
commit's own launcher, so today's platform and the last Orthanc 1.10.1 commit are measured
the same way, from committed code (never a working tree that others are editing); and what
the soak reads of their processes (/proc: RSS, CPU, CPU affinity)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy.stack.client import StackClient
from deploy.stack.processes import read_pid
from deploy.stack.settings import REPO_ROOT

# bad4de4 "Gateway: person searches limited per caller": the parent of 5c5e00c, which moved
# every Orthanc to Debian 13's 1.12.7 (as tests/upgrade/test_upgrade_path.py names it).
LAST_ORTHANC_1_10_COMMIT = "bad4de422be6fc1a0e0ec28a7be8d82f97f9de6e"
LAUNCHER_TIMEOUT_S = 600


class SoakStack:
    """One commit's stack on a fresh state directory under var/ (removed by `down`)."""

    def __init__(self, commit: str, label: str) -> None:
        self.commit = resolve(commit)
        self.label = label
        base = REPO_ROOT / "var"
        # not /tmp: SeaweedFS runs on a private one
        self.tree = Path(tempfile.mkdtemp(prefix=f"soak-tree-{self.commit[:7]}-", dir=base))
        self.tree.chmod(0o755)  # each Orthanc runs as a service uid and reads its plugins here
        self.state = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=base))
        self.state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
        self.cache = REPO_ROOT / "var" / "cache"

    def export(self) -> None:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", self.commit],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(self.tree)], input=archive, timeout=120, check=True)
        (self.tree / ".venv").symlink_to(REPO_ROOT / ".venv")

    def launcher(self, command: str) -> str:
        """`python -m deploy.stack COMMAND` of the exported tree; its output."""
        env = {**os.environ, "STACK_DIR": str(self.state), "STACK_CACHE_DIR": str(self.cache)}
        env.pop("STACK_ENV", None)
        done = subprocess.run(
            [str(self.tree / ".venv" / "bin" / "python"), "-m", "deploy.stack", command],
            cwd=self.tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=LAUNCHER_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.label}: launcher {command} failed (logs in {self.state / 'log'}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def up(self) -> StackClient:
        self.export()
        self.launcher("up")
        return StackClient.from_file(self.state / "stack.env")

    def down(self, keep_state: bool) -> None:
        """Stop the stack; remove its state unless asked to keep it (a failed run's logs)."""
        try:
            self.launcher("down")
        finally:
            shutil.rmtree(self.tree, ignore_errors=True)
            if not keep_state:
                shutil.rmtree(self.state, ignore_errors=True)

    def services(self) -> dict[str, int]:
        """Service name -> PID, from the launcher's PID files (only live processes)."""
        out = {}
        for path in sorted((self.state / "run").glob("*.pid")):
            pid = read_pid(self.state / "run", path.stem)
            if pid is not None:
                out[path.stem] = pid
        return out


def resolve(commit: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """`root` and every process below it (a service's workers: nginx, uvicorn, Keycloak)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (children they waited for included)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def command_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these processes on `cpus` (threads made later inherit it)."""
    for pid in pids:
        try:
            tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                continue
