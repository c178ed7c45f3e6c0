"""Both DICOM listeners on one edge (#11), with real clients (pynetdicom, dcmtk's storescu):
the hospital PACS's AE title is let in only over mutual TLS (the edge's nginx sidecar), the
modality's only over plain TCP (Orthanc's own port); what either sends lands at central. A
plain association claiming the PACS's AE title is refused, and so is TLS without a client
certificate, and TLS with another certificate of the hospital CA than the PACS's (refused by
the sidecar: no byte reaches Orthanc); the edge reaches the PACS over TLS too (C-MOVE to
it, through the sidecar)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deploy.samples import modality
from deploy.samples.pacs import HospitalPacs
from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study, wait_for_instances
from deploy.stack.pki import issue_leaf

from ..support.eventually import eventually
from .fresh import fresh_seed
from .test_edge_retrieval import pacs_for

PACS = "HOSP_PACS"
CT = "DEMO_CT"
CENTRAL_DEADLINE_S = 120


@pytest.fixture(scope="module")
def pacs_a(stack: StackClient) -> Iterator[HospitalPacs]:
    with pacs_for(stack, "A") as pacs:
        yield pacs


def dx_study(stack: StackClient) -> SampleStudy:
    return make_study(fresh_seed(), "DX", institution_code=stack["EDGE_A_INSTITUTION"])


def at_central(stack: StackClient, study: SampleStudy) -> None:
    """Wait (bounded) until central holds every instance of the study."""
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        wait_for_instances(
            central,
            study.exam.study_instance_uid,
            study.exam.instance_count,
            timeout_s=CENTRAL_DEADLINE_S,
        )


def not_at_edge(stack: StackClient, study: SampleStudy) -> bool:
    with stack.orthanc("EDGE_A") as edge:
        return find_study(edge, study.exam.study_instance_uid) is None


def write_files(study: SampleStudy, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in study.instances():
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def storescu(
    stack: StackClient, calling_aet: str, port: int, files: list[str], *tls: str
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu to edge A (TLS options, if any, in `tls`)."""
    return subprocess.run(
        [
            *("storescu", "-aet", calling_aet, "-aec", stack["EDGE_A_AET"]),
            *("-to", "30", "-ta", "30", "-td", "30", *tls, "127.0.0.1", str(port), *files),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def pacs_tls_options(stack: StackClient) -> list[str]:
    return ["+tls", stack["PACS_TLS_KEY"], stack["PACS_TLS_CERT"], "+cf", stack["CA_CERT"]]


def plain_port(stack: StackClient) -> int:
    return int(stack["EDGE_A_DICOM_PORT"])


def tls_port(stack: StackClient) -> int:
    return int(stack["EDGE_A_DICOM_TLS_PORT"])


def test_the_stack_says_which_listener_each_ae_title_uses(stack: StackClient) -> None:
    assert stack["EDGE_A_TLS_ONLY_AETS"].split(",") == [PACS]
    assert stack.edge_dicom("A", PACS)[0] == tls_port(stack) != plain_port(stack)
    assert stack.edge_dicom("A", CT) == (plain_port(stack), None)


def test_pynetdicom_tls_c_store_from_the_pacs_lands_at_central(stack: StackClient) -> None:
    study = dx_study(stack)
    port, tls = stack.edge_dicom("A", PACS)
    assert tls is not None
    result = modality.send(
        study.instances(),
        host="127.0.0.1",
        port=port,
        called_aet=stack["EDGE_A_AET"],
        calling_aet=PACS,
        tls=tls,
    )
    assert result.ok and result.sent == 1, result.failed
    at_central(stack, study)


def test_storescu_plain_from_the_modality_lands_at_central(
    stack: StackClient, tmp_path: Path
) -> None:
    study = dx_study(stack)
    done = storescu(stack, CT, plain_port(stack), write_files(study, tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    at_central(stack, study)


def test_storescu_tls_from_the_pacs_lands_at_central(stack: StackClient, tmp_path: Path) -> None:
    study = dx_study(stack)
    files = write_files(study, tmp_path)
    done = storescu(stack, PACS, tls_port(stack), files, *pacs_tls_options(stack))
    assert done.returncode == 0, done.stdout + done.stderr
    at_central(stack, study)


def test_a_plain_association_from_the_pacs_ae_title_is_refused(
    stack: StackClient, tmp_path: Path
) -> None:
    """The PACS's AE title on the plain port: Orthanc rejects the association (A-ASSOCIATE-
    RJ), to pynetdicom and to storescu, and stores nothing."""
    study = dx_study(stack)
    ae = AE(ae_title=PACS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", [modality.EXPLICIT_LE])  # DX
    assoc = ae.associate("127.0.0.1", plain_port(stack), ae_title=stack["EDGE_A_AET"])
    assert not assoc.is_established and assoc.is_rejected
    done = storescu(stack, PACS, plain_port(stack), write_files(study, tmp_path))
    assert done.returncode != 0
    assert "Association Rejected" in done.stdout + done.stderr, done.stdout + done.stderr
    assert not_at_edge(stack, study)


def test_the_modality_ae_title_is_refused_over_tls(stack: StackClient, tmp_path: Path) -> None:
    """The other way round: a TLS-capable client that claims the modality's (plain-only) AE
    title through the TLS listener is rejected too, even with a good certificate."""
    study = dx_study(stack)
    files = write_files(study, tmp_path)
    done = storescu(stack, CT, tls_port(stack), files, *pacs_tls_options(stack))
    assert done.returncode != 0
    assert "Association Rejected" in done.stdout + done.stderr, done.stdout + done.stderr
    assert not_at_edge(stack, study)


def test_tls_without_a_client_certificate_is_refused(stack: StackClient, tmp_path: Path) -> None:
    ae = AE(ae_title=PACS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    anonymous = ssl.create_default_context(cafile=stack["CA_CERT"])
    try:
        assoc = ae.associate(
            "127.0.0.1",
            tls_port(stack),
            ae_title=stack["EDGE_A_AET"],
            tls_args=(anonymous, "127.0.0.1"),
        )
        established = assoc.is_established
    except (ssl.SSLError, OSError):
        established = False
    assert not established
    study = dx_study(stack)
    files = write_files(study, tmp_path)
    done = storescu(stack, PACS, tls_port(stack), files, "+tla", "+cf", stack["CA_CERT"])
    assert done.returncode != 0, done.stdout + done.stderr
    assert not_at_edge(stack, study)


def test_a_c_move_to_the_pacs_goes_out_over_tls_through_the_sidecar(
    stack: StackClient, pacs_a: HospitalPacs
) -> None:
    """The PACS stand-in speaks only mutual TLS (a plain echo to it fails); it asks the edge,
    over TLS, to C-MOVE a study to it, and receives it: the edge's sub-operations went out
    through the sidecar's port for the PACS, which the sidecar's log shows."""
    ae = AE(ae_title=CT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    plain = ae.associate("127.0.0.1", pacs_a.port, ae_title=PACS)
    assert not plain.is_established
    study = dx_study(stack)
    assert stack.send_to_edge("A", study.instances()).ok
    uid = study.exam.study_instance_uid
    with stack.orthanc("EDGE_A") as edge:
        wait_for_instances(edge, uid, 1, timeout_s=30)
    status = pacs_a.move(*stack_edge_tls(stack), uid, destination=PACS)
    assert status == 0x0000
    assert uid in {str(d.StudyInstanceUID) for d in pacs_a.received}
    log = Path(stack["STACK_DIR"]) / "edge-a-tls" / "logs" / "access.log"
    outbound = f"{stack['EDGE_A_TLS_SOURCE_ADDRESS']}:"  # the sidecar's port for the PACS
    upstream = f" 127.0.0.1:{pacs_a.port} "

    def logged() -> bool:
        text = log.read_text() if log.exists() else ""
        return any(outbound in line and upstream in line for line in text.splitlines())

    eventually(
        logged, what="the sidecar's log line of the edge's association to the PACS", timeout=30
    )


def stack_edge_tls(stack: StackClient) -> tuple[str, int, str]:
    return "127.0.0.1", tls_port(stack), stack["EDGE_A_AET"]


def sidecar_log(stack: StackClient) -> str:
    log = Path(stack["STACK_DIR"]) / "edge-a-tls" / "logs" / "access.log"
    return log.read_text() if log.exists() else ""


@pytest.mark.parametrize(
    "common_name",
    [
        "NOT_THE_PACS",  # another peer's certificate of the same CA
        "hosp_pacs",  # the PACS's subject in another case: compared as text, case included
    ],
)
def test_another_certificate_of_the_ca_cannot_claim_the_pacs_ae_title(
    stack: StackClient, tmp_path: Path, common_name: str
) -> None:
    """A good client certificate of the hospital CA, not the PACS's, presenting the PACS's AE
    title over TLS: the sidecar closes the connection after the handshake (its log: 502,
    no upstream), so Orthanc never sees the association (not even to reject it), with
    pynetdicom and with storescu +tls; nothing is stored. The PACS's own certificate still
    lands at central (test_pynetdicom_tls_..., test_storescu_tls_...)."""
    cert, key = issue_leaf(Path(stack["CA_CERT"]).parent, f"test-peer-{common_name}", common_name)
    ae = AE(ae_title=PACS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    tls = modality.tls_context(stack["CA_CERT"], str(cert), str(key))
    assoc = ae.associate(
        "127.0.0.1", tls_port(stack), ae_title=stack["EDGE_A_AET"], tls_args=(tls, "127.0.0.1")
    )
    established, rejected = assoc.is_established, assoc.is_rejected
    if established:
        assoc.release()
    assert not established and not rejected
    study = dx_study(stack)
    files = write_files(study, tmp_path)
    options = ["+tls", str(key), str(cert), "+cf", stack["CA_CERT"]]
    done = storescu(stack, PACS, tls_port(stack), files, *options)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Association Rejected" not in done.stdout + done.stderr  # Orthanc never saw it
    assert not_at_edge(stack, study)
    subject = f'"CN={common_name}" '

    def refused_twice() -> bool:
        lines = [line for line in sidecar_log(stack).splitlines() if subject in line]
        return len(lines) >= 2 and all(
            " 502 " in ln and " dicom_tls_refused " in ln for ln in lines
        )

    eventually(
        refused_twice, what=f"the sidecar's log of {common_name}'s refused connections", timeout=15
    )
