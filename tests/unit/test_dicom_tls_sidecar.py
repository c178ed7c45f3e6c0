"""The TLS sidecar's nginx configuration, as the launcher writes it for an edge."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from deploy.stack.pki import ensure_pki
from deploy.stack.services.dicom_tls import DicomTlsA, DicomTlsB
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


def test_in_mutual_tls_to_orthancs_plain_port_from_the_sidecars_address(tmp_path: Path) -> None:
    inbound, outbound = server_blocks(written(DicomTlsA, tmp_path))
    assert "listen 127.0.0.1:2762 ssl;" in inbound
    assert "ssl_verify_client on;" in inbound
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in inbound
    assert f"ssl_client_certificate {tmp_path}/pki/ca.pem;" in inbound
    assert "proxy_bind 127.0.0.2;" in inbound and "proxy_pass 127.0.0.1:4242;" in inbound
    # out: where HOSP_PACS's DicomModalities entry points, mutual TLS to the PACS, verified
    assert "listen 127.0.0.2:11113;" in outbound and "proxy_pass 127.0.0.1:11112;" in outbound
    for line in ("proxy_ssl on;", "proxy_ssl_verify on;", "proxy_ssl_protocols TLSv1.2 TLSv1.3;"):
        assert line in outbound
    assert f"proxy_ssl_certificate {tmp_path}/pki/edge-a.pem;" in outbound


def test_timeouts_are_explicit_and_each_edge_has_its_own_address(tmp_path: Path) -> None:
    conf_a = written(DicomTlsA, tmp_path)
    conf_b = written(DicomTlsB, tmp_path)
    for conf in (conf_a, conf_b):
        assert re.search(r"proxy_connect_timeout \d+s;", conf)
        assert re.search(r"proxy_timeout \d+s;", conf)
        assert re.search(r"ssl_handshake_timeout \d+s;", conf)
        assert "${" not in conf
    assert "proxy_bind 127.0.0.3;" in conf_b and "listen 127.0.0.3:11115;" in conf_b
