"""`python -m deploy.stack rotate-key --new-key k2`: a new master key for every central node.

Each central node keeps its own key ring file. A key made current on one node before the
others hold it would seal objects they cannot read, so rotation has two phases:

0. every node's ring must agree with node 1's (the same ids with the same bytes, the same
   current key), but for the new key of a rotation that stopped half-way;
1. the same new key is added, not current, to every node's ring; then each node's
   /imaging-cloud/status must list it among the keys it has loaded, with the key check
   value (kcv) of the bytes added: a node showing another kcv stops the rotation at once;
2. only then it is made current on every node, and each node's status must name it current.

A node that does not confirm in time stops the rotation with an error naming it. After
phase 1 that leaves the key added but not current anywhere: safe, nothing is sealed under
it yet, and running the same command again resumes (a node that holds the key already
gives its material to the others, so every node has the same bytes). The key material is
generated here, written only into the ring files (atomically, keeping their owner), and
never printed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
from imgcloud.errors import KeyRingError
from imgcloud.storage.keyring import (
    MASTER_KEY_BYTES,
    KeyRing,
    check_key_id,
    key_check_value,
    update_key_ring,
)

from .context import StackContext
from .errors import StackError
from .launcher import read_stack_env, services

DEFAULT_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.5


class KeyRotationError(StackError):
    """A rotation stopped: a ring could not be changed, or a node did not confirm."""


class KeyRingNode(Protocol):
    """What rotation needs of a central Orthanc service (deploy.stack.services)."""

    name: str

    @property
    def key_ring_file(self) -> Path: ...
    @property
    def url(self) -> str: ...
    @property
    def credentials(self) -> tuple[str, str]: ...


def central_nodes(ctx: StackContext) -> list[KeyRingNode]:
    """Every central Orthanc service of this stack (one or several nodes), in start order;
    refused if the running stack has another number of nodes (its stack.env says)."""
    found = [svc for svc in services(ctx) if getattr(svc, "role", None) == "central"]
    check_node_count(ctx.settings.stack_env, len(found))
    return cast(list[KeyRingNode], found)


def check_node_count(stack_env: Path, count: int) -> None:
    """A rotation that missed a node would leave it unable to read what the others seal:
    the settings (STACK_CENTRAL_NODES) must name as many nodes as `up` started."""
    if not stack_env.exists():
        return
    started = read_stack_env(stack_env).get("CENTRAL_NODES")
    if started is not None and started != str(count):
        raise KeyRotationError(
            "rotate-key",
            f"the stack was started with {started} central nodes ({stack_env}) but the "
            f"settings name {count}: set STACK_CENTRAL_NODES={started}",
        )


def loaded_key_ring(node: KeyRingNode, timeout_s: float = 5.0) -> dict[str, Any]:
    """The key ring as the node's running Orthanc has loaded it (its status route)."""
    try:
        response = httpx.get(
            f"{node.url}/imaging-cloud/status", auth=node.credentials, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise KeyRotationError(node.name, f"status: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise KeyRotationError(node.name, f"status: HTTP {response.status_code}")
    ring = response.json().get("key_ring")
    if not isinstance(ring, dict):
        raise KeyRotationError(node.name, "status shows no key_ring (an older plugin?)")
    return ring


def wait_for_nodes(
    nodes: Sequence[KeyRingNode],
    confirmed: Callable[[dict[str, Any], KeyRingNode], bool],
    what: str,
    timeout_s: float,
    read: Callable[[KeyRingNode], dict[str, Any]] = loaded_key_ring,
) -> None:
    """Poll every node's loaded ring until `confirmed` holds for each, against one deadline;
    KeyRotationError naming the nodes that did not confirm, and what each last showed.

    The nodes are asked at the same time, so one that hangs does not keep the others from
    being asked; each is asked once more after the deadline before it counts as failed."""
    deadline = time.monotonic() + timeout_s
    waiting = list(nodes)
    last: dict[str, str] = {}

    def ask(node: KeyRingNode) -> bool:
        try:
            ring = read(node)
        except KeyRotationError as exc:
            last[node.name] = exc.message
            return False
        if confirmed(ring, node):  # it may raise KeyRotationError: stop at once
            return True
        last[node.name] = f"version {ring.get('version')}, current {ring.get('current')}"
        return False

    with ThreadPoolExecutor(max_workers=max(1, len(waiting))) as pool:
        while True:
            expired = time.monotonic() >= deadline
            answers = list(pool.map(ask, waiting))
            waiting = [node for node, ok in zip(waiting, answers, strict=True) if not ok]
            if not waiting:
                return
            if expired:
                names = ", ".join(n.name for n in waiting)
                seen = "; ".join(f"{n.name}: {last.get(n.name, 'no answer')}" for n in waiting)
                raise KeyRotationError(
                    names, f"did not confirm {what} within {timeout_s:.0f} s (last seen: {seen})"
                )
            time.sleep(POLL_INTERVAL_S)


@dataclass(frozen=True)
class RotationResult:
    key_id: str
    versions: dict[str, int]  # node name -> its ring's version after the rotation


def _shared_material(nodes: Sequence[KeyRingNode], key_id: str) -> bytes:
    """The key's material: that of the nodes holding it already (a resumed rotation), which
    must agree, or a fresh random key."""
    held: list[tuple[str, bytes]] = []
    for node in nodes:
        material = _read(node).get(key_id)
        if material is not None:
            held.append((node.name, material))
    if not held:
        return secrets.token_bytes(MASTER_KEY_BYTES)
    name, material = held[0]
    differing = [other for other, key in held[1:] if not secrets.compare_digest(key, material)]
    if differing:
        raise KeyRotationError(
            ", ".join(differing),
            f"holds a key '{key_id}' other than {name}'s: pick a new key id",
        )
    return material


def check_rings_agree(nodes: Sequence[KeyRingNode], pending: str | None = None) -> None:
    """KeyRotationError naming the nodes whose ring disagrees with the first node's: a node
    left out of a rotation, or a regenerated ring, cannot read what the others seal."""
    first = _read(nodes[0])
    differing = []
    for node in nodes[1:]:
        why = first.disagreement(_read(node), pending)
        if why is not None:
            differing.append(f"{node.name} {why}")
    if differing:
        raise KeyRotationError(
            ", ".join(d.split(" ", 1)[0] for d in differing),
            f"key ring differs from {nodes[0].name}'s: {'; '.join(differing)}; make the rings "
            "agree first (imgcloud.storage add-key/promote on that node)",
        )


def _read(node: KeyRingNode) -> KeyRing:
    try:
        return KeyRing.from_file(node.key_ring_file, f"{node.name} key ring")
    except KeyRingError as exc:
        raise KeyRotationError(node.name, str(exc)) from None


def _change(node: KeyRingNode, change: Callable[[KeyRing], KeyRing]) -> KeyRing:
    try:
        return update_key_ring(node.key_ring_file, change, f"{node.name} key ring")[1]
    except (KeyRingError, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KeyRotationError(node.name, f"key ring not changed: {detail}") from None


def rotate_key(
    nodes: Sequence[KeyRingNode],
    key_id: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    say: Callable[[str], None] = print,
    read: Callable[[KeyRingNode], dict[str, Any]] = loaded_key_ring,
) -> RotationResult:
    """Add `key_id` to every node's ring, wait until every node has loaded it, then make it
    current on every node and wait until each seals under it."""
    if not nodes:
        raise KeyRotationError("rotate-key", "no central node in this stack")
    try:
        check_key_id(key_id)
    except KeyRingError as exc:
        raise KeyRotationError("rotate-key", str(exc)) from None
    check_rings_agree(nodes, pending=key_id)
    material = _shared_material(nodes, key_id)
    kcv = key_check_value(material)

    def add(ring: KeyRing) -> KeyRing:
        # the ring may have changed since _shared_material read it (an operator's add-key)
        if ring.get(key_id) is None:
            return ring.with_key(key_id, material)
        if ring.holds(key_id, material):
            return ring
        raise KeyRingError(f"key '{key_id}' was added meanwhile with other bytes: pick a new id")

    def loaded(ring: dict[str, Any], node: KeyRingNode) -> bool:
        if key_id not in ring.get("keys", ()):
            return False
        shown = (ring.get("kcv") or {}).get(key_id)
        if shown != kcv:
            raise KeyRotationError(
                node.name,
                f"has loaded key {key_id} with check value {shown}, not {kcv}: other bytes "
                "(or an older plugin); not made current anywhere",
            )
        return True

    for node in nodes:
        ring = _change(node, add)
        say(f"  {node.name:<10} key {key_id} added (ring version {ring.version}), not current")
    wait_for_nodes(nodes, loaded, f"key {key_id} loaded", timeout_s, read)
    say(f"  every node ({len(nodes)}) has loaded key {key_id} (kcv {kcv})")

    versions: dict[str, int] = {}
    for node in nodes:
        ring = _change(node, lambda r: r.promoted(key_id))
        versions[node.name] = ring.version
        say(f"  {node.name:<10} key {key_id} current (ring version {ring.version})")
    wait_for_nodes(
        nodes, lambda r, _n: r.get("current") == key_id, f"key {key_id} current", timeout_s, read
    )
    say(f"  every node seals new objects under {key_id}")
    return RotationResult(key_id, versions)
