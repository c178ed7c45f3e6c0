"""A stack's PKI from before the leaves had key identifiers (the Orthanc 1.10.1 stack):
the launcher keeps its CA and issues the gateway's certificate again (docs/upgrade.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from deploy.stack.pki import ensure_pki


def authority_key_id(cert_path: Path) -> bytes | None:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.key_identifier


def old_style_leaf(paths: dict[str, Path]) -> None:
    """The gateway's leaf as the 1.10.1 launcher issued it: SAN, no key identifiers."""
    ca_key = serialization.load_pem_private_key(paths["ca_key"].read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    key = serialization.load_pem_private_key(paths["server_key"].read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    paths["server_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_an_older_gateway_certificate_is_issued_again_under_the_same_ca(tmp_path: Path) -> None:
    paths = ensure_pki(tmp_path)
    old_style_leaf(paths)
    ca_before = paths["ca_cert"].read_bytes()
    assert authority_key_id(paths["server_cert"]) is None

    ensure_pki(tmp_path)

    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert paths["ca_cert"].read_bytes() == ca_before  # the edges' trust stays as it was
    assert authority_key_id(paths["server_cert"]) == ski


def test_a_current_gateway_certificate_is_kept(tmp_path: Path) -> None:
    paths = ensure_pki(tmp_path)
    issued = paths["server_cert"].read_bytes()
    ensure_pki(tmp_path)
    assert paths["server_cert"].read_bytes() == issued
