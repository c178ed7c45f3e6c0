"""The TLS sidecar's nginx configuration, as the launcher writes it for an edge: only the
PACS's certificate is passed to Orthanc, from the PACS's own source address."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509

from deploy.stack.pki import ensure_pki, issue_leaf
from deploy.stack.services.dicom_tls import (
    DicomTlsA,
    DicomTlsB,
    outbound_server,
    peer_subject_line,
)
from deploy.stack.services.orthanc import HOSPITAL_PACS_TLS_NAME, DicomPeer
from deploy.stack.settings import REPO_ROOT

PORTS = {
    "edge_a_dicom": 4242,
    "edge_a_dicom_tls": 2762,
    "edge_a_pacs_tls": 11113,
    "hospital_pacs_a": 11112,
    "edge_b_dicom": 4243,
    "edge_b_dicom_tls": 2763,
    "edge_b_pacs_tls": 11115,
    "hospital_pacs_b": 11114,
}


def written(cls: type, tmp_path: Path) -> str:
    ctx = SimpleNamespace(
        state=tmp_path,
        pki=ensure_pki(tmp_path / "pki"),
        ports=PORTS,
        settings=SimpleNamespace(repo_root=REPO_ROOT),
    )
    sidecar = cls(ctx)
    sidecar.prepare()
    return (sidecar.home / "nginx.conf").read_text()


def server_blocks(conf: str) -> list[str]:
    return re.findall(r"\n    server \{\n(.*?)\n    \}", conf, re.S)


def test_in_mutual_tls_to_orthancs_plain_port_from_the_pacs_certificates_address(
    tmp_path: Path,
) -> None:
    conf = written(DicomTlsA, tmp_path)
    inbound, outbound = server_blocks(conf)
    assert "listen 127.0.0.1:2762 ssl;" in inbound
    assert "ssl_verify_client on;" in inbound
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in inbound
    # forward secrecy and AEAD only; a leaf the CA issued itself (no intermediate)
    assert "ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;" in inbound
    assert "ssl_verify_depth 1;" in inbound
    assert f"ssl_client_certificate {tmp_path}/pki/ca.pem;" in inbound
    # the PACS's certificate, whole and case included, gets the PACS's address; any other
    # certificate of the CA gets none and an upstream with no live server
    source_map = re.search(
        r"map \$ssl_client_s_dn \$dicom_tls_source \{\n(.*?)\n    \}", conf, re.S
    )
    assert source_map is not None
    assert [line.strip() for line in source_map.group(1).splitlines()] == [
        'default "";',
        '"~^\\QCN=HOSP_PACS\\E\\z" 127.0.0.2;',
    ]
    assert '"" dicom_tls_refused;' in conf and "default 127.0.0.1:4242;" in conf
    assert re.search(r"upstream dicom_tls_refused \{\s*server 127\.0\.0\.1:9 down;\s*\}", conf)
    assert "proxy_bind $dicom_tls_source;" in inbound
    assert "proxy_pass $dicom_tls_upstream;" in inbound
    # out: where HOSP_PACS's DicomModalities entry points, mutual TLS to the PACS, verified
    assert "listen 127.0.0.2:11113;" in outbound and "proxy_pass 127.0.0.1:11112;" in outbound
    for line in (
        "proxy_ssl on;",
        "proxy_ssl_verify on;",
        "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        "proxy_ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;",
        "proxy_ssl_verify_depth 1;",
    ):
        assert line in outbound
    assert f"proxy_ssl_certificate {tmp_path}/pki/edge-a.pem;" in outbound
    # a name the PACS stand-ins' leaf alone carries: every leaf of the CA has localhost
    assert f"proxy_ssl_name {HOSPITAL_PACS_TLS_NAME};" in outbound


def test_outbound_checks_a_name_only_the_pacs_certificate_carries(tmp_path: Path) -> None:
    """W1: with localhost, the sidecar took any leaf of the local CA for the PACS."""
    conf = written(DicomTlsA, tmp_path)
    (name,) = re.findall(r"proxy_ssl_name (\S+);", conf)
    pki = tmp_path / "pki"
    pacs, _ = issue_leaf(pki, "hospital-pacs", "HOSP_PACS", dns_names=("localhost", name))
    others = [pki / "server.pem", pki / "edge-a.pem"]
    others += [issue_leaf(pki, n, n.upper())[0] for n in ("demo-modality", "seaweedfs")]
    assert name in dns_names(pacs)
    for other in others:
        assert name not in dns_names(other), other


def dns_names(cert: Path) -> set[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def test_a_leaf_is_issued_again_when_its_names_change(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ensure_pki(pki)
    first, _ = issue_leaf(pki, "hospital-pacs", "HOSP_PACS")
    assert dns_names(first) == {"localhost"}
    again, _ = issue_leaf(pki, "hospital-pacs", "HOSP_PACS", dns_names=("localhost", "p.test"))
    assert dns_names(again) == {"localhost", "p.test"}


@pytest.mark.parametrize("server_name", ["", "localhost"])
def test_a_tls_only_peer_without_a_name_of_its_own_is_refused(server_name: str) -> None:
    peer = DicomPeer(
        "HOSP_PACS", "10.0.0.8", 104, True, 11113, "127.0.0.2", "CN=HOSP_PACS", server_name
    )
    with pytest.raises(ValueError, match="HOSP_PACS: no server name of its own"):
        outbound_server(peer, Path("c.pem"), Path("k.pem"), Path("ca.pem"))


def test_timeouts_are_explicit_and_each_edge_has_its_own_address(tmp_path: Path) -> None:
    conf_a = written(DicomTlsA, tmp_path)
    conf_b = written(DicomTlsB, tmp_path)
    for conf in (conf_a, conf_b):
        assert re.search(r"proxy_connect_timeout \d+s;", conf)
        assert re.search(r"proxy_timeout \d+s;", conf)
        assert re.search(r"ssl_handshake_timeout \d+s;", conf)
        assert "${" not in conf
    assert '"~^\\QCN=HOSP_PACS\\E\\z" 127.0.0.3;' in conf_b and "listen 127.0.0.3:11115;" in conf_b


def test_each_tls_peer_gets_its_own_map_line_and_address() -> None:
    pacs = DicomPeer("HOSP_PACS", "10.0.0.8", 104, True, 11113, "127.0.0.2", "CN=HOSP_PACS")
    vna = DicomPeer("HOSP_VNA", "10.0.0.9", 104, True, 11114, "127.0.0.4", "CN=vna.h-a,O=H A")
    assert peer_subject_line(pacs).strip() == '"~^\\QCN=HOSP_PACS\\E\\z" 127.0.0.2;'
    assert peer_subject_line(vna).strip() == '"~^\\QCN=vna.h-a,O=H A\\E\\z" 127.0.0.4;'


@pytest.mark.parametrize(
    "subject", ["", 'CN=a" 127.0.0.9; "~.', "CN=a\\E.*", "CN=a;}", "CN=$ssl_client_s_dn"]
)
def test_a_subject_that_could_change_the_configuration_is_refused(subject: str) -> None:
    peer = DicomPeer("HOSP_PACS", "10.0.0.8", 104, True, 11113, "127.0.0.2", subject)
    with pytest.raises(ValueError, match="HOSP_PACS: no usable certificate subject"):
        peer_subject_line(peer)


def compose_value(text: str, values: dict[str, str]) -> str:
    """What docker compose makes of a value: ${NAME:?why} from `values`, $$ a dollar."""
    text = re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", lambda m: values[m.group(1)], text)
    return text.replace("$$", "$")


def test_compose_sidecars_pass_the_pacs_certificate_only_as_the_launcher_does() -> None:
    """docker-compose.yml fills the same template: the PACS's subject gets the map line the
    launcher writes, every placeholder has a value, and the PACS's name is checked."""
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    template = (REPO_ROOT / "deploy/edge/dicom-tls.conf.template").read_text()
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    for name, letter in (("edge-a-dicom-tls", "A"), ("edge-b-dicom-tls", "B")):
        env = services[name]["environment"]
        assert placeholders <= set(env), placeholders - set(env)
        subject = f"CN=pacs01.hospital-{letter.lower()}.local,OU=Radiology,O=Hospital {letter}"
        values = {
            f"HOSPITAL_{letter}_PACS_SUBJECT": subject,
            f"HOSPITAL_{letter}_PACS_TLS": "10.1.0.8:2762",
            f"HOSPITAL_{letter}_PACS_TLS_NAME": "pacs01.hospital.local",
        }
        pacs = DicomPeer("HOSP_PACS", "10.1.0.8", 2762, True, 11113, "127.0.0.2", subject)
        assert compose_value(env["TLS_PEERS"], values) == peer_subject_line(pacs).lstrip()
        outbound = compose_value(env["OUTBOUND_SERVERS"], values)
        assert "listen 127.0.0.2:11113;" in outbound
        assert "proxy_ssl_name pacs01.hospital.local;" in outbound
        assert "proxy_ssl_verify on;" in outbound
        assert "proxy_ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;" in outbound
        assert "proxy_ssl_verify_depth 1;" in outbound
