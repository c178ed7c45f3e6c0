"""deploy.stack.key_rotation without a stack: nodes are key ring files, each read by a real
KeyRingSource as its Orthanc would, and "status" is that source's summary. Phase 2 starts
only once every node has loaded the key; a node that does not confirm stops the rotation
with the key added but current nowhere."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imgcloud.storage.archive import KeyRingSource
from imgcloud.storage.keyring import KeyRing, update_key_ring, write_key_ring

from deploy.stack import key_rotation
from deploy.stack.key_rotation import (
    KeyRingNode,
    KeyRotationError,
    check_node_count,
    rotate_key,
)


@dataclass
class Node:
    name: str
    key_ring_file: Path
    url: str = "http://127.0.0.1:9"
    credentials: tuple[str, str] = ("u", "p")


@pytest.fixture
def nodes(tmp_path: Path) -> list[Node]:
    """Two nodes whose rings agree, as the stack starts them (node 2's a copy of node 1's)."""
    result = []
    first = KeyRing.generate("k1")
    for name in ("central", "central-2"):
        path = tmp_path / name / "keyring.json"
        path.parent.mkdir()
        write_key_ring(first, path)
        result.append(Node(name, path))
    return result


class Orthancs:
    """Each node's KeyRingSource; `frozen` nodes keep showing the ring they first loaded,
    as an Orthanc that is stuck (or reads another file) would. Records what each showed."""

    def __init__(self, nodes: list[Node], frozen: tuple[str, ...] = ()) -> None:
        self.sources = {n.name: KeyRingSource(n.key_ring_file, check_every_s=0) for n in nodes}
        self.frozen = {name: self.sources[name].summary() for name in frozen}
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def read(self, node: KeyRingNode) -> dict[str, Any]:
        shown = self.frozen.get(node.name) or self.sources[node.name].summary()
        self.seen.append((node.name, shown))
        return shown


def ring(node: Node) -> KeyRing:
    return KeyRing.from_file(node.key_ring_file, "x")


def test_every_node_gets_the_same_key_and_it_becomes_current_after_all_loaded_it(
    nodes: list[Node],
) -> None:
    orthancs = Orthancs(nodes)
    said: list[str] = []
    result = rotate_key(nodes, "k2", timeout_s=5, say=said.append, read=orthancs.read)
    first, second = ring(nodes[0]), ring(nodes[1])
    assert first.holds("k2", second.get("k2") or b""), "the nodes hold different k2"
    assert (first.current_id, second.current_id) == ("k2", "k2")
    assert result.versions == {"central": 3, "central-2": 3}
    # no node was shown k2 current before every node had shown it loaded
    loaded_by_all = max(i for i, (_n, s) in enumerate(orthancs.seen) if s["current"] == "k1")
    assert {n for n, s in orthancs.seen[: loaded_by_all + 1] if "k2" in s["keys"]} == {
        "central",
        "central-2",
    }
    text = "\n".join(said)
    leaked = [
        key_id
        for r in (first, second)
        for key_id in r.key_ids
        if base64.b64encode(r.get(key_id) or b"").decode() in text
    ]
    assert not leaked, f"material of {leaked} in the output"


def test_a_node_that_does_not_confirm_stops_the_rotation_before_any_key_is_current(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_rotation, "POLL_INTERVAL_S", 0.05)
    orthancs = Orthancs(nodes, frozen=("central-2",))
    with pytest.raises(KeyRotationError) as stopped:
        rotate_key(nodes, "k2", timeout_s=0.5, say=lambda _m: None, read=orthancs.read)
    assert stopped.value.service == "central-2"
    assert "did not confirm key k2 loaded" in str(stopped.value)
    for node in nodes:
        assert (ring(node).current_id, ring(node).key_ids) == ("k1", ("k1", "k2"))


def test_a_node_that_does_not_answer_is_named(nodes: list[Node]) -> None:
    def unreachable(node: KeyRingNode) -> dict[str, Any]:
        raise KeyRotationError(node.name, "status: ConnectError")

    with pytest.raises(KeyRotationError, match=r"central, central-2: did not confirm .*"
                       r"ConnectError"):  # fmt: skip
        rotate_key(nodes, "k2", timeout_s=0, say=lambda _m: None, read=unreachable)


def test_a_hanging_node_does_not_make_the_others_look_unconfirmed(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """central-2 hangs past the deadline on every request; central shows the key only from
    its second answer on (its Orthanc re-reads the ring every 2 s): only central-2 fails."""
    monkeypatch.setattr(key_rotation, "POLL_INTERVAL_S", 0.05)
    orthancs = Orthancs(nodes)
    asked: dict[str, int] = {}

    def read(node: KeyRingNode) -> dict[str, Any]:
        asked[node.name] = asked.get(node.name, 0) + 1
        if node.name == "central-2":
            time.sleep(0.6)
            raise KeyRotationError(node.name, "status: ReadTimeout")
        if asked[node.name] == 1:
            return {"version": 1, "current": "k1", "keys": ["k1"]}  # not reloaded yet
        return orthancs.read(node)

    with pytest.raises(KeyRotationError) as stopped:
        rotate_key(nodes, "k2", timeout_s=0.5, say=lambda _m: None, read=read)
    assert stopped.value.service == "central-2"
    assert "ReadTimeout" in str(stopped.value)


def test_a_resumed_rotation_gives_the_others_the_key_a_node_holds_already(
    nodes: list[Node],
) -> None:
    update_key_ring(nodes[0].key_ring_file, lambda r: r.with_key("k2"))  # an earlier run
    rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    assert ring(nodes[0]).holds("k2", ring(nodes[1]).get("k2") or b""), "k2 differs"
    assert ring(nodes[0]).version == 3  # added once, promoted once


def test_two_nodes_holding_different_keys_under_one_id_are_refused(nodes: list[Node]) -> None:
    for node in nodes:
        update_key_ring(node.key_ring_file, lambda r: r.with_key("k2"))
    with pytest.raises(KeyRotationError, match=r"central-2: .*other bytes under key id 'k2'"):
        rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    assert [ring(n).current_id for n in nodes] == ["k1", "k1"]


def test_a_ring_that_cannot_be_changed_names_its_node(nodes: list[Node]) -> None:
    nodes[1].key_ring_file.write_text("{broken")
    with pytest.raises(KeyRotationError) as stopped:
        rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes[:1]).read)
    assert stopped.value.service == "central-2"
    assert ring(nodes[0]).current_id == "k1"


def test_no_central_node_is_an_error() -> None:
    with pytest.raises(KeyRotationError, match="no central node"):
        rotate_key([], "k2", say=lambda _m: None)


def test_the_node_count_must_be_the_one_the_stack_was_started_with(tmp_path: Path) -> None:
    env = tmp_path / "stack.env"
    check_node_count(env, 1)  # no stack.env yet: nothing to compare
    env.write_text("STACK_DIR=/x\nCENTRAL_NODES=2\n")
    check_node_count(env, 2)
    with pytest.raises(KeyRotationError, match=r"started with 2 central nodes.*=2"):
        check_node_count(env, 1)


def test_a_key_added_meanwhile_with_other_bytes_stops_the_rotation(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's add-key k2 on central-2 between reading the rings and changing them:
    the rotation must not take central-2's k2 for the one it is adding."""
    shared = key_rotation._shared_material

    def then_an_operator_adds_k2(nodes_: list[Node], key_id: str) -> bytes:
        material = shared(nodes_, key_id)
        update_key_ring(nodes[1].key_ring_file, lambda r: r.with_key(key_id))
        return material

    monkeypatch.setattr(key_rotation, "_shared_material", then_an_operator_adds_k2)
    with pytest.raises(KeyRotationError, match=r"central-2: .*added meanwhile with other bytes"):
        rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    assert [ring(n).current_id for n in nodes] == ["k1", "k1"]


def test_a_node_showing_another_check_value_stops_the_rotation_at_once(
    nodes: list[Node],
) -> None:
    """Its status lists k2 but with other bytes (its Orthanc read another file, say)."""
    orthancs = Orthancs(nodes)

    def read(node: KeyRingNode) -> dict[str, Any]:
        shown = orthancs.read(node)
        if node.name == "central-2" and "k2" in shown["keys"]:
            return {**shown, "kcv": {**shown["kcv"], "k2": "0" * 16}}
        return shown

    started = time.monotonic()
    with pytest.raises(KeyRotationError, match=r"central-2: .*check value 0{16}, not [0-9a-f]"):
        rotate_key(nodes, "k2", timeout_s=30, say=lambda _m: None, read=read)
    assert time.monotonic() - started < 10  # not after the timeout
    assert [ring(n).current_id for n in nodes] == ["k1", "k1"]


def test_rings_that_disagree_are_refused_before_anything_changes(nodes: list[Node]) -> None:
    write_key_ring(KeyRing.generate("k1"), nodes[1].key_ring_file)  # a regenerated ring
    with pytest.raises(KeyRotationError, match=r"central-2: .*other bytes under key id 'k1'"):
        rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    assert [ring(n).version for n in nodes] == [1, 1]
    write_key_ring(KeyRing.generate("k7"), nodes[1].key_ring_file)  # left out of a rotation
    with pytest.raises(KeyRotationError, match=r"central-2: .*other key ids"):
        rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)


def test_a_rotation_stopped_in_phase_2_resumes(nodes: list[Node]) -> None:
    """central made k2 current, central-2 did not: the rings differ only in the new key."""
    rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    update_key_ring(
        nodes[1].key_ring_file, lambda r: KeyRing("k1", {k: r.get(k) or b"" for k in r.key_ids}, 9)
    )
    rotate_key(nodes, "k2", timeout_s=5, say=lambda _m: None, read=Orthancs(nodes).read)
    assert [ring(n).current_id for n in nodes] == ["k2", "k2"]
