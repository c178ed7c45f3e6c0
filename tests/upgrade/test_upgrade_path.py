"""A running site's upgrade, Orthanc 1.10.1 to 1.12.7, in place (docs/upgrade.md).

The last commit of this repository on Debian 12's Orthanc 1.10.1 (Python plugin 4.0,
PostgreSQL plugin 4.0, DICOMweb 1.7) is exported from git and its own launcher starts a
stack on a fresh state directory; a study goes through each hospital's edge (A plain DICOM
and AES-GCM, B DICOM TLS and SM4-GCM) to central. That stack stops; today's launcher
starts on the same state directory (Orthanc 1.12.7 from Debian 13, PostgreSQL plugin 5.0)
with no step in between, as docs/upgrade.md tells an operator to do. Every instance then
reads back through the gateway (WADO-RS, a radiologist's token) and at its edge byte for
byte as 1.10.1 served it, including the "dicom-until-pixel-data" attachments 1.10.1 wrote
through our storage plugin, and a new study still goes from an edge to central.

This module starts two stacks of its own, one after the other, before the session's
stack (testpaths lists tests/upgrade first): run it under the stack lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deploy.samples import modality
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study, multipart_parts, wait_for_instances
from deploy.stack.launcher import down, load_context, up
from deploy.stack.settings import REPO_ROOT, StackSettings

pytestmark = pytest.mark.integration

# bad4de4 "Gateway: person searches limited per caller": the parent of 5c5e00c, the commit
# that moved every Orthanc to Debian 13's 1.12.7. Sites running it are what we upgrade.
LAST_ORTHANC_1_10_COMMIT = "bad4de422be6fc1a0e0ec28a7be8d82f97f9de6e"
HOST_ORTHANC = Path("/usr/sbin/Orthanc")
UNTIL_PIXEL_DATA = "dicom-until-pixel-data"
WADO_AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
SLICES = {"A": 4, "B": 3}
RADIOLOGIST = {"A": "DEMO_RADIOLOGIST_A", "B": "DEMO_RADIOLOGIST_B"}


@dataclass
class Held:
    """What one Orthanc served for a study before the upgrade (Orthanc instance IDs)."""

    files: dict[str, bytes] = field(default_factory=dict)
    heads: dict[str, bytes] = field(default_factory=dict)  # dicom-until-pixel-data
    attachments: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Before:
    system: dict[str, dict]  # /system of each Orthanc
    index_plugin: str  # central's PostgreSQL plugin version
    studies: dict[str, SampleStudy]
    central: dict[str, Held]  # per hospital letter
    edges: dict[str, Held]


def export_old_tree(base: Path) -> Path:
    """The 1.10.1 commit's files (git archive), sharing this checkout's venv."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", LAST_ORTHANC_1_10_COMMIT],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        pytest.fail(
            f"git archive {LAST_ORTHANC_1_10_COMMIT[:7]} failed (a shallow clone?): "
            f"{exc.stderr.decode(errors='replace').strip()}"
        )
    tree = base / f"upgrade-old-tree-{os.getpid()}"  # not /tmp: SeaweedFS runs on a private one
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, timeout=120, check=True)
    (tree / ".venv").symlink_to(REPO_ROOT / ".venv")
    return tree


def old_launcher(tree: Path, state: Path, cache: Path, command: str) -> None:
    """`python -m deploy.stack COMMAND` of the 1.10.1 tree on `state`."""
    env = {**os.environ, "STACK_DIR": str(state), "STACK_CACHE_DIR": str(cache)}
    env.pop("STACK_ENV", None)
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-m", "deploy.stack", command],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"old launcher {command}: {done.stdout}{done.stderr}"


def hold(orthanc: httpx.Client, study_instance_uid: str) -> Held:
    held = Held()
    study_id = find_study(orthanc, study_instance_uid)
    assert study_id, f"study {study_instance_uid} not in {orthanc.base_url}"
    for instance in orthanc.get(f"/studies/{study_id}/instances").json():
        iid = instance["ID"]
        held.files[iid] = orthanc.get(f"/instances/{iid}/file").raise_for_status().content
        held.attachments[iid] = orthanc.get(f"/instances/{iid}/attachments").json()
        head = orthanc.get(f"/instances/{iid}/attachments/{UNTIL_PIXEL_DATA}/data")
        if head.status_code == 200:
            held.heads[iid] = head.content
    return held


def wait_delivered(edge: httpx.Client, study_instance_uid: str, timeout_s: float = 90) -> None:
    """Until the edge has verified its study at central (its forward queue is empty)."""
    study_id = find_study(edge, study_instance_uid)
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = edge.get(f"/imaging-cloud/studies/{study_id}/forwarding").json()["state"]
        if state == "delivered":
            return
        time.sleep(0.5)
    raise TimeoutError(f"study {study_instance_uid} at the edge: {state} after {timeout_s} s")


def send_as_1_10_stack_wants(
    stack: StackClient, letter: str, study: SampleStudy
) -> modality.StoreResult:
    """The demo modality's C-STORE as the 1.10.1 stack took it (its stack.env): one DICOM
    port per edge, Orthanc's own TLS at hospital B. Today's client picks a listener from
    keys that stack.env did not have yet."""
    tls = None
    if stack.env.get(f"EDGE_{letter}_DICOM_TLS") == "1":
        tls = modality.tls_context(
            stack["CA_CERT"], stack["MODALITY_TLS_CERT"], stack["MODALITY_TLS_KEY"]
        )
    return modality.send(
        study.instances(),
        host="127.0.0.1",
        port=int(stack[f"EDGE_{letter}_DICOM_PORT"]),
        called_aet=stack[f"EDGE_{letter}_AET"],
        tls=tls,
    )


def send_study(stack: StackClient, letter: str, seed: int) -> SampleStudy:
    study = make_study(
        seed,
        "CT",
        instances=SLICES[letter],
        institution_code=stack[f"EDGE_{letter}_INSTITUTION"],
        institution_name=f"Demo Hospital {letter}",
    )
    result = (
        stack.send_to_edge(letter, study.instances())
        if f"EDGE_{letter}_TLS_ONLY_AETS" in stack.env
        else send_as_1_10_stack_wants(stack, letter, study)
    )
    assert result.ok and result.sent == SLICES[letter], result.failed
    return study


def ingest_on_old_stack(stack: StackClient) -> Before:
    seed = int.from_bytes(os.urandom(3), "big") + 1_000_000
    studies = {letter: send_study(stack, letter, seed + n) for n, letter in enumerate("AB")}
    central, edges, system = {}, {}, {}
    with stack.orthanc("CENTRAL_ORTHANC") as c:
        system["central"] = c.get("/system").json()
        index_plugin = str(c.get("/plugins/postgresql-index").json()["Version"])
        for letter, study in studies.items():
            uid = study.exam.study_instance_uid
            wait_for_instances(c, uid, SLICES[letter], timeout_s=120)
            with stack.orthanc(f"EDGE_{letter}") as edge:
                wait_delivered(edge, uid)
                system[f"edge-{letter}"] = edge.get("/system").json()
                edges[letter] = hold(edge, uid)
            central[letter] = hold(c, uid)
    return Before(system, index_plugin, studies, central, edges)


@pytest.fixture(scope="module")
def upgraded() -> Iterator[tuple[StackClient, Before]]:
    if not HOST_ORTHANC.exists():
        pytest.skip(f"{HOST_ORTHANC} (Debian 12's Orthanc 1.10.1, the version upgraded from)")
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="upgrade-stack-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    settings = StackSettings.from_env(str(state))
    tree, ctx = None, None
    try:
        tree = export_old_tree(base)
        old_launcher(tree, state, settings.cache_dir, "up")
        try:
            before = ingest_on_old_stack(StackClient.from_file(settings.stack_env))
        finally:
            old_launcher(tree, state, settings.cache_dir, "down")
        ctx = load_context(settings)
        up(ctx, say=lambda msg: print(msg, flush=True))
        yield StackClient.from_file(settings.stack_env), before
    finally:
        if ctx is not None:
            down(ctx, say=lambda _msg: None)
        shutil.rmtree(state, ignore_errors=True)
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)


def test_data_was_written_by_orthanc_1_10_and_is_served_by_1_12(upgraded) -> None:
    stack, before = upgraded
    assert {s["Version"] for s in before.system.values()} == {"1.10.1"}
    assert before.system["central"]["DatabaseBackendPlugin"].endswith("PostgreSQLIndex.so.4.0")
    # 1.10.1 wrote the until-pixel-data attachment through our storage plugin everywhere.
    for held in [*before.central.values(), *before.edges.values()]:
        assert held.heads.keys() == held.files.keys()
    for which in ("CENTRAL_ORTHANC", "EDGE_A", "EDGE_B"):
        with stack.orthanc(which) as orthanc:
            system = orthanc.get("/system").json()
        assert system["Version"] == "1.12.7", which
        assert system["DatabaseVersion"] == 6, which  # same schema: no --upgrade needed
    assert before.index_plugin == "4.0"
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        assert central.get("/plugins/postgresql-index").json()["Version"] == "5.0"


@pytest.mark.parametrize("letter", ["A", "B"])
def test_every_instance_reads_through_the_gateway_as_before(upgraded, letter: str) -> None:
    stack, before = upgraded
    exam = before.studies[letter].exam
    who = RADIOLOGIST[letter]
    token = stack.password_token(stack[f"{who}_USER"], stack[f"{who}_PASSWORD"])["access_token"]
    with stack.gateway(token) as gateway:
        found = gateway.get(
            "/dicom-web/studies",
            params={"StudyInstanceUID": exam.study_instance_uid},
            headers={"Accept": "application/dicom+json"},
        )
        study = gateway.get(f"/dicom-web/studies/{exam.study_instance_uid}", headers=WADO_AS_STORED)
    assert found.status_code == 200 and exam.study_instance_uid in found.text
    assert study.status_code == 200, study.text[:300]
    assert sorted(multipart_parts(study)) == sorted(before.central[letter].files.values())


@pytest.mark.parametrize("where", ["CENTRAL_ORTHANC", "EDGE_A", "EDGE_B"])
def test_every_attachment_reads_and_decrypts_as_before(upgraded, where: str) -> None:
    stack, before = upgraded
    if where == "CENTRAL_ORTHANC":
        held = {**before.central["A"].files, **before.central["B"].files}
        heads = {**before.central["A"].heads, **before.central["B"].heads}
        listed = {**before.central["A"].attachments, **before.central["B"].attachments}
    else:
        edge = before.edges[where[-1]]
        held, heads, listed = edge.files, edge.heads, edge.attachments
    with stack.orthanc(where) as orthanc:
        for iid, raw in held.items():
            assert orthanc.get(f"/instances/{iid}/file").content == raw, iid
            head = orthanc.get(f"/instances/{iid}/attachments/{UNTIL_PIXEL_DATA}/data")
            assert head.status_code == 200 and head.content == heads[iid], iid
            assert orthanc.get(f"/instances/{iid}/attachments").json() == listed[iid], iid


def test_a_new_study_still_goes_from_each_edge_to_central(upgraded) -> None:
    stack, _before = upgraded
    seed = int.from_bytes(os.urandom(3), "big") + 1_000_000
    for n, letter in enumerate("AB"):
        study = send_study(stack, letter, seed + n)
        uid = study.exam.study_instance_uid
        with stack.orthanc("CENTRAL_ORTHANC") as central:
            wait_for_instances(central, uid, SLICES[letter], timeout_s=120)
        with stack.orthanc(f"EDGE_{letter}") as edge:
            wait_delivered(edge, uid)
