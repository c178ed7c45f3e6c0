"""Key-ring rotation across two central nodes (#19, 4), on the two_centrals stack: the new
key is added on both nodes before either makes it current, an object sealed on node 1
under it reads byte-identical on node 2, each node's /imaging-cloud/status shows the
ring's version, and a node that does not confirm stops the rotation before any node seals
under the new key."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from imgcloud.storage.envelope import key_id_of
from imgcloud.storage.keyring import KeyRing
from imgcloud.storage.object_keys import object_key

from deploy.samples.studies import make_study
from deploy.stack.key_rotation import KeyRotationError, central_nodes, rotate_key
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import REPO_ROOT

from ..integration.fresh import fresh_seed
from .conftest import CentralNode, TwoCentrals

pytestmark = pytest.mark.integration


def loaded_ring(node: CentralNode) -> dict:
    with node.client() as orthanc:
        answer = orthanc.get("/imaging-cloud/status")
    assert answer.status_code == 200, answer.text
    return answer.json()["key_ring"]


def ring_file(two_centrals: TwoCentrals, name: str) -> KeyRing:
    (service,) = [s for s in central_nodes(two_centrals.ctx) if s.name == name]
    return KeyRing.from_file(service.key_ring_file, name)


def rotate_key_cli(
    two_centrals: TwoCentrals, key_id: str, central_nodes: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STACK_CENTRAL_NODES": central_nodes, "STACK_INDEXER_NODES": "2"}
    state = str(two_centrals.ctx.state)
    command = ["rotate-key", "--new-key", key_id, "--timeout", "30", "--state-dir", state]
    return subprocess.run(
        [sys.executable, "-m", "deploy.stack", *command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_object_sealed_on_node_1_under_the_new_key_reads_on_node_2(
    two_centrals: TwoCentrals,
) -> None:
    first, second = two_centrals.nodes
    key_id = f"k-nodes-{fresh_seed()}"
    before = {n.name: loaded_ring(n)["version"] for n in two_centrals.nodes}
    # the operator's command; settings naming fewer nodes than run are refused first
    one_node = rotate_key_cli(two_centrals, key_id, central_nodes="1")
    assert one_node.returncode == 1
    assert "started with 2 central nodes" in one_node.stderr
    assert {n.name: loaded_ring(n)["version"] for n in two_centrals.nodes} == before
    rotated = rotate_key_cli(two_centrals, key_id, central_nodes="2")
    assert rotated.returncode == 0, rotated.stderr
    said = [rotated.stdout, rotated.stderr]
    for node in two_centrals.nodes:
        shown = loaded_ring(node)
        assert shown["current"] == key_id and key_id in shown["keys"], node.name
        assert (
            shown["version"] == before[node.name] + 2 == ring_file(two_centrals, node.name).version
        )
        assert set(shown) == {"version", "current", "keys", "kcv"}  # no material
    # every node got the same bytes (the launcher, as root, may read both rings), and each
    # status shows their check value
    a, b = ring_file(two_centrals, first.name), ring_file(two_centrals, second.name)
    assert a.holds(key_id, b.get(key_id) or b""), f"the nodes hold different {key_id}"
    assert {loaded_ring(n)["kcv"][key_id] for n in two_centrals.nodes} == {a.check_value(key_id)}

    study = make_study(fresh_seed(), "CT", instances=2, institution_code="H0001")
    sent = {u.orthanc_id: u.raw for u in first.upload_study(study.instances())}
    with first.client() as node_1:
        uuids = {
            i: node_1.get(f"/instances/{i}/attachments/dicom/info").json()["Uuid"] for i in sent
        }
    env = two_centrals.client
    s3 = s3_client(env["S3_ENDPOINT"], env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"])
    listed = {
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["S3_BUCKET"])
        for obj in page.get("Contents", [])
    }
    for uuid in uuids.values():
        key = object_key("", uuid, 1)
        assert key in listed
        blob = s3.get_object(Bucket=env["S3_BUCKET"], Key=key)["Body"].read()
        assert key_id_of(blob, key) == key_id  # node 1 sealed it under the new key
    with second.client() as node_2:
        for instance_id, raw in sent.items():
            served = node_2.get(f"/instances/{instance_id}/file")
            assert served.status_code == 200, served.text
            assert hashlib.sha256(served.content).digest() == hashlib.sha256(raw).digest()
    output = "\n".join(said)
    leaked = [
        n.name
        for n in two_centrals.nodes
        if (ring_file(two_centrals, n.name).get(key_id) or b"").hex() in output
    ]
    assert not leaked, f"{key_id}'s material is in rotate-key's output"


def test_a_node_that_does_not_confirm_stops_the_rotation_before_the_key_is_current(
    two_centrals: TwoCentrals,
) -> None:
    """Node 2 paused (SIGSTOP: its status never answers, and it is not restarted, so the
    other tests still see both nodes as they started), then resumed."""
    first, second = two_centrals.nodes
    key_id = f"k-paused-{fresh_seed()}"
    current = loaded_ring(first)["current"]
    (paused,) = [s for s in central_nodes(two_centrals.ctx) if s.name == second.name]
    pid = paused.pid()  # type: ignore[attr-defined]
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeyRotationError) as stopped:
            rotate_key(central_nodes(two_centrals.ctx), key_id, timeout_s=5, say=lambda _m: None)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stopped.value.service == second.name
    assert f"did not confirm key {key_id} loaded" in str(stopped.value)
    shown = loaded_ring(first)
    assert key_id in shown["keys"] and shown["current"] == current  # added, not current
    for name in (first.name, second.name):
        ring = ring_file(two_centrals, name)
        assert key_id in ring.key_ids and ring.current_id == current
    # once node 2 answers again, the same command resumes with the key the rings hold
    held = ring_file(two_centrals, first.name).get(key_id) or b""
    rotate_key(central_nodes(two_centrals.ctx), key_id, timeout_s=30, say=lambda _m: None)
    for node in two_centrals.nodes:
        assert loaded_ring(node)["current"] == key_id
        assert ring_file(two_centrals, node.name).holds(key_id, held), f"{node.name} differs"
