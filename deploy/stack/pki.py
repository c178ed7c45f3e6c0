"""The local certificate authority, the gateway's server certificate, and DICOM TLS
certificates (a hospital edge's listener, the demo modality's client certificate)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension that allows what is named and nothing else."""
    unknown = set(allowed) - set(KEY_USAGES)
    if unknown:
        raise ValueError(f"not key usages: {sorted(unknown)}")
    return x509.KeyUsage(**{usage: usage in allowed for usage in KEY_USAGES})


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def ensure_pki(pki_dir: Path) -> dict[str, Path]:
    """Create (once) a CA and a server certificate for 127.0.0.1/localhost; return the paths."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca_cert": pki_dir / "ca.pem",
        "ca_key": pki_dir / "ca.key",
        "server_cert": pki_dir / "server.pem",
        "server_key": pki_dir / "server.key",
    }
    if all(p.exists() for p in paths.values()):
        # A stack started before the leaves had key identifiers (Orthanc 1.10.1's) is
        # upgraded in place: its gateway certificate is issued again, or the edges' Python
        # 3.13 refuses the gateway (docs/upgrade.md).
        issue_leaf(pki_dir, "server", "localhost")
        return paths
    for stale in pki_dir.glob("*.pem"):  # leaves of an older CA would not verify
        stale.unlink()
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Imaging Cloud local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Imaging Cloud local CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage("digital_signature", "key_cert_sign", "crl_sign"),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(paths["ca_key"], ca_key)
    paths["ca_cert"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issue_leaf(pki_dir, "server", "localhost")  # the gateway's certificate
    return paths


def _has_key_ids(cert_path: Path) -> bool:
    """A leaf issued before the key identifiers were added is issued again."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True


def _dns_names(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName))


def issue_leaf(
    pki_dir: Path,
    name: str,
    common_name: str,
    extra_ips: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = ("localhost",),
) -> tuple[Path, Path]:
    """A certificate (server and client use, SAN 127.0.0.1 + extra_ips and dns_names)
    signed by the CA. A name only one leaf carries is that leaf's alone to a client that
    checks it (every leaf carries localhost).

    Created once (again if its names changed); returns (certificate, key) paths.
    """
    cert_path, key_path = pki_dir / f"{name}.pem", pki_dir / f"{name}.key"
    if (
        cert_path.exists()
        and key_path.exists()
        and _has_key_ids(cert_path)
        and _dns_names(cert_path) == set(dns_names)
    ):
        return cert_path, key_path
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.DNSName(dns) for dns in dns_names),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", *extra_ips)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Python 3.13 (Orthanc's Python plugin on Debian 13) verifies strictly (X.509
        # strict mode): a leaf without its authority key identifier is refused.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
