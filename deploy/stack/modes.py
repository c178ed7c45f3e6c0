"""Every file the stack writes under its state directory is private to its owner.

New files are private because the launcher and every service run with umask 077. This
also tightens what an older stack left behind (e.g. an edge index written 0644) at `up`.
Two directories keep a traversal bit, because another system user must pass through them:
the state directory itself (0711: PostgreSQL's user reaches its data directory) and the
gateway's home (0710, group www-data: nginx's workers reach their temporary directory).
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

STATE_DIR_MODE = 0o711
GATEWAY_HOME_MODE = 0o710


def expected_dir_mode(state: Path, path: Path) -> int:
    if path == state:
        return STATE_DIR_MODE
    if path == state / "gateway":
        return GATEWAY_HOME_MODE
    return 0o700


def stack_paths(state: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Every file and directory of one stack (not the download cache, not another stack's
    state directory nested in it, not sockets or symbolic links)."""
    skipped = {p.resolve() for p in skip}
    stack = [state]
    while stack:
        current = stack.pop()
        yield current
        try:
            children = list(os.scandir(current))
        except (FileNotFoundError, PermissionError):
            continue
        for entry in children:
            path = Path(entry.path)
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if path.resolve() in skipped or (path / "ports.json").exists():
                    continue
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                yield path


def loose(state: Path, skip: tuple[Path, ...] = ()) -> list[tuple[Path, int]]:
    """(path, mode) of every file or directory more open than the rule allows."""
    found = []
    for path in stack_paths(state, skip):
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        allowed = expected_dir_mode(state, path) if path.is_dir() else 0o700
        if mode & ~allowed:
            found.append((path, mode))
    return found


def tighten(state: Path, skip: tuple[Path, ...] = ()) -> None:
    """Remove group and other bits the rule does not allow; set the traversal bits."""
    for path, mode in loose(state, skip):
        allowed = expected_dir_mode(state, path) if path.is_dir() else 0o700
        try:
            path.chmod(mode & allowed)
        except FileNotFoundError:
            continue
    state.chmod(STATE_DIR_MODE)
    gateway = state / "gateway"
    if gateway.is_dir():
        os.chown(gateway, 0, grp.getgrnam("www-data").gr_gid)
        gateway.chmod(GATEWAY_HOME_MODE)
