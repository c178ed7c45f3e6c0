"""The TLS sidecar's certificate-to-address binding, with the real nginx and the shipped
template, two TLS-only peers and no stack: each peer's certificate reaches Orthanc's port
(here a TCP listener that answers with the caller's address) from that peer's address
only, so the Orthanc host check of that address lets in that peer's AE title only; any
other certificate of the CA, one whose subject differs in a character, its case, or a
character '.' would match in a regular expression, reaches nothing."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.stack.pki import ensure_pki, issue_leaf
from deploy.stack.ports import free_port
from deploy.stack.services.dicom_tls import STREAM_MODULE, peer_subject_line
from deploy.stack.services.gateway import NGINX, render_template
from deploy.stack.services.orthanc import DicomPeer
from deploy.stack.settings import REPO_ROOT

PACS_SUBJECT = "CN=pacs01.hospital-a.local,OU=Radiology,O=Hospital A"
PEERS = (
    DicomPeer("HOSP_PACS", "127.0.0.1", 1, True, 1, "127.0.0.2", PACS_SUBJECT),
    DicomPeer("HOSP_VNA", "127.0.0.1", 1, True, 1, "127.0.0.4", "CN=HOSP_VNA"),
)
TIMEOUT_S = 10
Rdns = list[tuple[x509.ObjectIdentifier, str]]

pytestmark = pytest.mark.skipif(
    not (NGINX.exists() and STREAM_MODULE.exists()), reason="nginx and its stream module"
)


def issue(pki: Path, name: str, rdns: Rdns) -> Path:
    """A client certificate of the CA with this subject (ASN.1 order: least specific first)."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in rdns]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = pki / f"{name}.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def hospital_a(cn: str, o: str = "Hospital A") -> Rdns:
    """PACS_SUBJECT's attributes with these values (RFC 2253 prints them the other way)."""
    return [
        (NameOID.ORGANIZATION_NAME, o),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "Radiology"),
        (NameOID.COMMON_NAME, cn),
    ]


class Callers:
    """Orthanc's plain port in this test: answers each connection with the caller's address."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, (host, _port) = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                self.seen.append(host)
                conn.sendall(f"{host}\n".encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        self.server.close()


Sidecar = tuple[int, Path, Callers]  # its TLS port, its PKI, what reached "Orthanc"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    home = tmp_path_factory.mktemp("sidecar")
    pki_paths = ensure_pki(home / "pki")
    edge_cert, edge_key = issue_leaf(home / "pki", "edge", "EDGE_TEST")
    (home / "logs").mkdir(mode=0o700)
    callers = Callers()
    port = free_port()
    conf = render_template(
        (REPO_ROOT / "deploy/edge/dicom-tls.conf.template").read_text(),
        {
            "SIDECAR_HOME": str(home),
            "SIDECAR_LOGS": str(home / "logs"),
            "NGINX_USER": "www-data",
            "STREAM_MODULE": str(STREAM_MODULE),
            "CONNECT_TIMEOUT": "5s",
            "IDLE_TIMEOUT": "10s",
            "TLS_LISTEN": f"127.0.0.1:{port}",
            "EDGE_CERT": str(edge_cert),
            "EDGE_KEY": str(edge_key),
            "CA_CERT": str(pki_paths["ca_cert"]),
            "TLS_PEERS": "".join(peer_subject_line(p) for p in PEERS),
            "ORTHANC_DICOM": f"127.0.0.1:{callers.port}",
            "OUTBOUND_SERVERS": "",  # the outbound servers listen on the peers' addresses
        },
    )
    (home / "nginx.conf").write_text(conf)
    errors = (home / "logs" / "stderr").open("w")
    nginx = subprocess.Popen(
        [str(NGINX), "-p", str(home), "-c", str(home / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert nginx.poll() is None, (home / "logs" / "stderr").read_text()
                threading.Event().wait(0.1)
        yield port, home / "pki", callers
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(TIMEOUT_S)
        errors.close()
        callers.close()


def connect_as(sidecar: Sidecar, cert: Path) -> str:
    """Mutual TLS to the sidecar with this certificate; what came back ("" if closed)."""
    port, pki, _callers = sidecar
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(cert))
    with socket.create_connection(("127.0.0.1", port), TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            try:
                return tls.recv(64).decode().strip()
            except (ssl.SSLError, ConnectionError):
                return ""


def test_each_peers_certificate_comes_from_that_peers_address_only(sidecar: Sidecar) -> None:
    pki = sidecar[1]
    pacs = issue(pki, "pacs", hospital_a("pacs01.hospital-a.local"))
    vna = issue(pki, "vna", [(NameOID.COMMON_NAME, "HOSP_VNA")])
    assert connect_as(sidecar, pacs) == "127.0.0.2"
    assert connect_as(sidecar, vna) == "127.0.0.4"


@pytest.mark.parametrize(
    "rdns",
    [
        [(NameOID.COMMON_NAME, "HOSP_PACS")],  # another peer of the same CA
        hospital_a("pacs01.hospital-a.local", o="Hospital B"),
        hospital_a("PACS01.hospital-a.local"),  # case
        hospital_a("pacs01xhospital-a.local"),  # '.' is no wildcard
        # one CN holding the whole subject: RFC 2253 escapes its commas (\\,)
        [(NameOID.COMMON_NAME, PACS_SUBJECT[3:])],
        [(NameOID.COMMON_NAME, "HOSP_VNA"), (NameOID.COMMON_NAME, "x")],  # more RDNs
        [(NameOID.ORGANIZATION_NAME, "x"), (NameOID.COMMON_NAME, "HOSP_VNA")],
    ],
)
def test_any_other_certificate_of_the_ca_reaches_nothing(sidecar: Sidecar, rdns: Rdns) -> None:
    _port, pki, callers = sidecar
    before = len(callers.seen)
    other = issue(pki, "other", rdns)
    assert connect_as(sidecar, other) == ""
    assert len(callers.seen) == before  # not a byte, not even a connection
