"""DICOM TLS at hospital B's edge: its TLS listener (the nginx sidecar beside Orthanc) takes
mutual TLS with local-CA certificates, TLS 1.2 or 1.3, and nothing else; only the PACS's
certificate gets through, and behind it only the PACS's AE title is let in."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deploy.samples import modality
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study

from .fresh import fresh_seed


def tls_port(stack: StackClient) -> int:
    return int(stack["EDGE_B_DICOM_TLS_PORT"])


def echo(stack: StackClient, tls: ssl.SSLContext | None, calling_aet: str = "HOSP_PACS") -> bool:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1",
        tls_port(stack),
        ae_title=stack["EDGE_B_AET"],
        tls_args=(tls, "127.0.0.1") if tls else None,
    )
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def pacs_tls(stack: StackClient) -> ssl.SSLContext:
    return modality.tls_context(stack["CA_CERT"], stack["PACS_TLS_CERT"], stack["PACS_TLS_KEY"])


def test_mutual_tls_c_echo_and_c_store(stack: StackClient) -> None:
    assert stack["EDGE_B_TLS_ONLY_AETS"] == "HOSP_PACS"
    tls = pacs_tls(stack)
    assert echo(stack, tls)
    study = make_study(fresh_seed(), "DX", institution_code=stack["EDGE_B_INSTITUTION"])
    result = modality.send(
        study.instances(),
        host="127.0.0.1",
        port=tls_port(stack),
        called_aet=stack["EDGE_B_AET"],
        calling_aet="HOSP_PACS",
        tls=tls,
    )
    assert result.ok and result.sent == 1
    with stack.orthanc("EDGE_B") as edge:
        assert find_study(edge, study.exam.study_instance_uid) is not None


def test_an_ae_title_allowed_only_plain_is_refused_over_tls(stack: StackClient) -> None:
    """The modality's certificate is good, but its AE title may use the plain port only."""
    tls = modality.tls_context(
        stack["CA_CERT"], stack["MODALITY_TLS_CERT"], stack["MODALITY_TLS_KEY"]
    )
    assert not echo(stack, tls, calling_aet="DEMO_CT")


@pytest.mark.parametrize(
    ("cert", "key", "subject"),
    [
        ("MODALITY_TLS_CERT", "MODALITY_TLS_KEY", "CN=DEMO_CT"),
        # the edge's own certificate (it presents it to the PACS) is not the PACS's either
        (None, None, "CN=EDGE_H0002"),
    ],
)
def test_another_certificate_of_the_ca_cannot_claim_the_pacs_ae_title(
    stack: StackClient, cert: str | None, key: str | None, subject: str
) -> None:
    """The certificate is good (the CA's), the AE title is the PACS's: the sidecar passes
    only the PACS's certificate on, so this one reaches nothing (502 in its log)."""
    pki = Path(stack["CA_CERT"]).parent
    cert_path = stack[cert] if cert else str(pki / "edge-b.pem")
    key_path = stack[key] if key else str(pki / "edge-b.key")
    assert not echo(stack, modality.tls_context(stack["CA_CERT"], cert_path, key_path))
    log = Path(stack["STACK_DIR"]) / "edge-b-tls" / "logs" / "access.log"
    lines = [line for line in log.read_text().splitlines() if f'"{subject}" ' in line]
    assert lines and " 502 " in lines[-1] and " dicom_tls_refused " in lines[-1], lines


def test_plain_tcp_association_is_refused_on_the_tls_port(stack: StackClient) -> None:
    assert not echo(stack, None)


def test_tls_without_a_client_certificate_is_refused(stack: StackClient) -> None:
    anonymous = ssl.create_default_context(cafile=stack["CA_CERT"])
    try:
        established = echo(stack, anonymous)
    except (ssl.SSLError, OSError):
        established = False
    assert not established


def test_the_edge_presents_a_certificate_from_the_local_ca(stack: StackClient) -> None:
    with socket.create_connection(("127.0.0.1", tls_port(stack)), 10) as raw:
        with pacs_tls(stack).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            peer = tls.getpeercert()
            assert peer is not None
            assert peer["subject"] == ((("commonName", stack["EDGE_B_AET"]),),)
    untrusting = ssl.create_default_context()  # the system CAs do not know our local CA
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", tls_port(stack)), 10) as raw:
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
