"""Every file the stack writes under its state directory is 0600/0700 (private to the
service's user), every service runs with umask 077, and SeaweedFS writes its logs and
local sockets inside the stack, not in /tmp."""

from __future__ import annotations

import grp
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from deploy.stack.client import StackClient
from deploy.stack.launcher import SERVICE_CLASSES, load_context
from deploy.stack.processes import read_pid
from deploy.stack.settings import StackSettings

SYSTEM_TMP = Path(tempfile.gettempdir())  # where SeaweedFS put its logs and sockets before

# Files a program chmods itself, whatever its umask, inside a directory that is 0700:
# SeaweedFS writes each volume's info file (.vif: volume id, version, no content) 0644.
OWN_MODE_IN_PRIVATE_DIR = ("seaweedfs/data/*.vif",)

# Directories another system user must pass through (never list or read).
TRAVERSE_ONLY = {
    ".": (0o711, None),  # PostgreSQL's user reaches pg/
    "gateway": (0o710, "www-data"),  # nginx's workers reach gateway/tmp/
}


def _walk(state: Path):
    for root, dirs, files in os.walk(state):
        dirs[:] = [d for d in dirs if not (Path(root, d) / "ports.json").exists()]
        for name in [*dirs, *files]:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                continue
            yield path, info


def test_every_file_and_directory_of_the_stack_is_private(stack: StackClient) -> None:
    state = Path(stack["STACK_DIR"])
    loose = {}
    for path, info in [(state, state.lstat()), *_walk(state)]:
        relative = str(path.relative_to(state))
        mode = stat.S_IMODE(info.st_mode)
        if relative in TRAVERSE_ONLY:
            allowed, group = TRAVERSE_ONLY[relative]
            if mode != allowed or (group and grp.getgrgid(info.st_gid).gr_name != group):
                loose[relative] = oct(mode)
        elif any(path.match(pattern) for pattern in OWN_MODE_IN_PRIVATE_DIR):
            if stat.S_IMODE(path.parent.stat().st_mode) != 0o700 or mode & 0o022:
                loose[relative] = oct(mode)
        elif mode & 0o077:
            loose[relative] = oct(mode)
    assert sorted(loose.items()) == []


def test_secrets_and_logs_are_0600(stack: StackClient) -> None:
    state = Path(stack["STACK_DIR"])
    files = [state / "secrets.json", state / "stack.env", *(state / "log").iterdir()]
    files += list((state / "gateway" / "logs").iterdir())
    assert {str(f.relative_to(state)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
        str(f.relative_to(state)): "0o600" for f in files
    }


def test_every_service_runs_with_umask_077(stack_settings: StackSettings) -> None:
    ctx = load_context(stack_settings)
    umasks = {}
    for cls in SERVICE_CLASSES:
        name = cls(ctx).name
        pid = read_pid(stack_settings.run_dir, name)
        assert pid is not None, name
        status = Path(f"/proc/{pid}/status").read_text()
        umask = re.search(r"^Umask:\s*(\d+)", status, re.M)
        assert umask, f"no Umask in /proc/{pid}/status"
        umasks[name] = umask.group(1)
    assert umasks == {name: "0077" for name in umasks}


def test_seaweedfs_logs_and_sockets_stay_in_the_stack(stack_settings: StackSettings) -> None:
    state = stack_settings.state_dir
    log = stack_settings.log("seaweedfs")
    deadline = time.monotonic() + 30
    while not re.search(r"^[IWE]\d{4} ", log.read_text(errors="replace"), re.M):
        assert time.monotonic() < deadline, "no SeaweedFS log line in var/log/seaweedfs.log"
        time.sleep(0.5)
    pid = read_pid(stack_settings.run_dir, "seaweedfs")
    assert pid is not None
    in_tmp = [
        target
        for fd in Path(f"/proc/{pid}/fd").iterdir()
        if Path(target := os.readlink(fd)).is_relative_to(SYSTEM_TMP)
    ]
    assert in_tmp == []
    ports = json.loads((state / "ports.json").read_text())
    ours = {str(v) for k, v in ports.items() if k.startswith("weed_")}
    sockets_in_tmp = [
        p.name for p in SYSTEM_TMP.glob("seaweedfs-*.sock") if p.stem.rsplit("-", 1)[-1] in ours
    ]
    assert sockets_in_tmp == []
    assert list((state / "seaweedfs" / "tmp").glob("seaweedfs-*.sock"))
