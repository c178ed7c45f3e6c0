"""Two central Orthanc nodes over one PostgreSQL index and one bucket (#19, 4): they start
at the same moment without error, a study stored through one is served by the other, and
the gateway sends requests to both (and to both indexer nodes)."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pydicom
import pytest

from deploy.samples.studies import make_study
from deploy.stack.client import find_study
from deploy.stack.launcher import status

from ..integration.fresh import fresh_seed
from ..support.eventually import eventually
from .conftest import TwoCentrals

pytestmark = pytest.mark.integration

# An error line of Orthanc (E1204 ...) or of the plugin's Python that is about the index,
# its schema or the plugin's tables: what two nodes racing at start-up would log.
INDEX_ERROR = re.compile(
    r"^(E\d{4} |.*(Traceback|Error\b|ERROR)).*"
    r"(schema|migrat|table|index|relation|database|postgres|sql|duplicate|lock)",
    re.I | re.M,
)


def start_time_s(pid: int) -> float:
    """When a process started, in seconds since boot (/proc/<pid>/stat, field 22)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / 100  # clock ticks; USER_HZ is 100 on Linux


def test_both_nodes_started_together_and_are_healthy(two_centrals: TwoCentrals) -> None:
    rows = {r.name: r for r in status(two_centrals.ctx)}
    assert {n.name: rows[n.name].problem for n in two_centrals.nodes} == {
        "central": None,
        "central-2": None,
    }
    started = [start_time_s(rows[n.name].pid) for n in two_centrals.nodes]  # type: ignore[arg-type]
    # started at the same moment: node 1 takes seconds to be healthy, node 2 did not wait
    assert max(started) - min(started) < 3.0, started
    for node in two_centrals.nodes:
        with node.client() as orthanc:
            system = orthanc.get("/system").json()
        assert system["Name"] == f"imaging-cloud-{node.name}"
        assert system["DatabaseBackendPlugin"] is not None


def test_neither_node_logs_an_index_or_schema_error(two_centrals: TwoCentrals) -> None:
    for node in two_centrals.nodes:
        text = node.log.read_text(errors="replace")
        assert [m.group(0) for m in INDEX_ERROR.finditer(text)][:5] == [], node.name


def test_a_study_stored_through_node_1_is_served_by_node_2(two_centrals: TwoCentrals) -> None:
    first, second = two_centrals.nodes
    study = make_study(fresh_seed(), "CT", instances=2, institution_code="H0001")
    sent = {u.sop_uid: u.raw for u in first.upload_study(study.instances())}
    uid = study.exam.study_instance_uid
    with second.client() as node_2:
        study_id = eventually(lambda: find_study(node_2, uid), what="node 2 finds the study")
        served = {}
        for instance in node_2.get(f"/studies/{study_id}/instances").json():
            file = node_2.get(f"/instances/{instance['ID']}/file")
            assert file.status_code == 200, file.text
            served[instance["MainDicomTags"]["SOPInstanceUID"]] = file.content
    assert sorted(served) == sorted(sent)
    for sop, raw in sent.items():
        assert hashlib.sha256(served[sop]).hexdigest() == hashlib.sha256(raw).hexdigest()
        original, copy = pydicom.dcmread(io.BytesIO(raw)), pydicom.dcmread(io.BytesIO(served[sop]))
        assert copy.PixelData == original.PixelData


def test_the_gateway_sends_requests_to_both_nodes(two_centrals: TwoCentrals) -> None:
    names = set()
    with two_centrals.client.gateway(two_centrals.token("ADMIN")) as admin:
        for _ in range(8):
            answer = admin.get("/orthanc/system")
            assert answer.status_code == 200, answer.text
            names.add(answer.json()["Name"])
    assert names == {f"imaging-cloud-{n.name}" for n in two_centrals.nodes}

    ports = [n.port for n in two_centrals.nodes]
    assert answered_by(two_centrals, "GET /orthanc/system", ports)


def test_the_gateway_sends_api_requests_to_both_indexer_nodes(two_centrals: TwoCentrals) -> None:
    with two_centrals.client.gateway() as anyone:
        for _ in range(8):
            answer = anyone.get("/api/healthz")
            assert answer.status_code == 200, answer.text
    assert answered_by(two_centrals, "GET /api/healthz", two_centrals.indexer_ports)


def answered_by(two_centrals: TwoCentrals, request: str, ports: list[int]) -> set[str]:
    """Waits until the gateway's access log shows `request` answered by every port."""
    wanted = {f"127.0.0.1:{port}" for port in ports}
    assert len(wanted) == 2

    def upstreams() -> set[str]:
        lines = two_centrals.gateway_access_log.read_text().splitlines()
        answered = {line.rsplit(" ", 1)[-1] for line in lines if f'"{request}"' in line}
        return wanted if wanted <= answered else set()

    return eventually(upstreams, what=f"the access log names both nodes for {request}", timeout=10)
