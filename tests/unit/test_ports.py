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
