import json
import socket
from pathlib import Path

import pytest

from deploy.stack.ports import PORT_NAMES, allocate, port_is_free


def test_allocates_distinct_free_ports_and_keeps_them(tmp_path: Path) -> None:
    ports = allocate(tmp_path / "ports.json")
    assert set(ports) == set(PORT_NAMES)
    assert len(set(ports.values())) == len(PORT_NAMES)
    assert allocate(tmp_path / "ports.json") == ports
    assert json.loads((tmp_path / "ports.json").read_text()) == ports


def test_environment_fixes_a_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLOUD_PORT_GATEWAY", "18443")
    ports = allocate(tmp_path / "ports.json")
    assert ports["gateway"] == 18443
    assert list(ports.values()).count(18443) == 1


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_a_recycled_pid_is_not_taken_for_our_service(tmp_path: Path) -> None:
    import os

    from deploy.stack.processes import pid_file, read_pid, spawn, stop

    pid = spawn("sleeper", ["sleep", "30"], run_dir=tmp_path, log=tmp_path / "sleeper.log")
    try:
        assert read_pid(tmp_path, "sleeper") == pid
        recorded = pid_file(tmp_path, "sleeper").read_text().split()
        # Same PID, other start time: as after a reboot, when the PID belongs to someone else.
        pid_file(tmp_path, "sleeper").write_text(f"{recorded[0]} 1")
        assert read_pid(tmp_path, "sleeper") is None
        assert not stop(tmp_path, "sleeper")  # nothing of ours to stop: nobody is signalled
        os.kill(pid, 0)  # the process is untouched
    finally:
        pid_file(tmp_path, "sleeper").write_text(" ".join(recorded))
        assert stop(tmp_path, "sleeper", timeout_s=5)


def test_a_stack_recorded_before_a_port_was_added_keeps_its_ports(tmp_path: Path) -> None:
    """An older stack's ports.json (no TLS listener yet) keeps every port it had."""
    path = tmp_path / "ports.json"
    ports = allocate(path)
    older = {k: v for k, v in ports.items() if "tls" not in k}
    path.write_text(json.dumps(older))
    again = allocate(path)
    assert set(again) == set(PORT_NAMES)
    assert {k: again[k] for k in older} == older
    assert len(set(again.values())) == len(PORT_NAMES)


def test_ports_are_picked_below_the_ephemeral_range(tmp_path: Path) -> None:
    """No outbound connection's source port can take a recorded port before its service
    binds it (CI saw the gateway's port so taken)."""
    from deploy.stack.ports import listening_range

    room = listening_range()
    assert len(room) > len(PORT_NAMES)  # Debian's default range leaves 20000-32767
    ports = allocate(tmp_path / "ports.json")
    assert all(port in room for port in ports.values())


def test_without_room_below_the_ephemeral_range_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.stack import ports as ports_module

    monkeypatch.setattr(ports_module, "listening_range", lambda: range(0))
    ports = allocate(tmp_path / "ports.json")
    assert set(ports) == set(PORT_NAMES)
    assert len(set(ports.values())) == len(PORT_NAMES)
    assert all(port_is_free(port) for port in ports.values())
