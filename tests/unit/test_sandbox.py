"""How the sandbox runs an Orthanc in the Debian 13 root: as the service uid, with the
stack's state hidden but for its own folders, every step exec'ing the next."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from deploy.stack.sandbox import SERVICE_GID, SERVICE_UID, OrthancPlatform, give_to_service

ROOT = Path("/cache/orthanc-root-x")


def script(platform: OrthancPlatform) -> list[str]:
    argv, _ = platform.command(
        ["/usr/sbin/Orthanc", "/repo/var/edge-a/orthanc.json"],
        {"HOME": "/repo/var/edge-a"},
        read_only=[Path("/repo"), Path("/repo/var/cache")],
        writable=[Path("/repo/var/edge-a")],
        hidden=[Path("/repo/var")],
    )
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    return argv[-1].split("; ")


def test_orthanc_is_exec_d_as_the_service_uid_with_a_private_umask() -> None:
    steps = script(OrthancPlatform(ROOT, Path("/venv")))
    last = shlex.split(steps[-1])
    assert last[:3] == ["exec", "chroot", str(ROOT)]
    assert last[3:9] == [
        "/usr/bin/setpriv",
        f"--reuid={SERVICE_UID}",
        f"--regid={SERVICE_GID}",
        "--clear-groups",
        "--no-new-privs",
        "/usr/bin/env",
    ]
    assert last[-2:] == ["/usr/sbin/Orthanc", "/repo/var/edge-a/orthanc.json"]
    assert steps[-2] == "umask 077" and steps[1] == "umask 022"


def test_the_state_is_hidden_before_its_own_folders_come_back() -> None:
    steps = script(OrthancPlatform(ROOT, Path("/venv")))
    mounts = [s.split()[-1] for s in steps if s.startswith("mount") and "remount" not in s]
    inside = [m.removeprefix(str(ROOT)) for m in mounts[4:]]
    assert inside == ["/repo", "/repo/var", "/repo/var/cache", "/repo/var/edge-a"]
    assert f"mount -t tmpfs -o mode=0755,size=1m tmpfs {ROOT}/repo/var" in steps
    assert f"mount -o remount,ro {ROOT}/repo/var" in steps  # the tmpfs itself read-only
    assert f"mount -o remount,bind,ro {ROOT}/repo/var/cache" in steps
    assert f"mount -o remount,bind,ro {ROOT}/repo/var/edge-a" not in steps


def test_a_debian_13_host_runs_orthanc_as_it_is() -> None:
    argv, env = OrthancPlatform(None, Path("/venv")).command(
        ["/usr/sbin/Orthanc", "c.json"], {"A": "1"}, read_only=[], writable=[Path("/x")]
    )
    assert (argv, env) == (["/usr/sbin/Orthanc", "c.json"], {"A": "1"})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_give_to_service_takes_root_s_files_only(tmp_path: Path) -> None:
    home = tmp_path / "edge-a"
    (home / "storage").mkdir(parents=True)
    (home / "orthanc.json").write_text("{}")
    (home / "theirs").write_text("")
    os.chown(home / "theirs", 1234, 1234)
    give_to_service(home)
    give_to_service(home)  # idempotent
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in [home, *home.rglob("*")]}
    ours = (SERVICE_UID, SERVICE_GID)
    assert owners == {"edge-a": ours, "storage": ours, "orthanc.json": ours, "theirs": (1234, 1234)}
    (tmp_path / "ports.json").write_text("{}")
    with pytest.raises(ValueError, match="whole stack"):
        give_to_service(tmp_path)
