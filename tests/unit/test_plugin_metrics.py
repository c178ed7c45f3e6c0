"""The plugins' metrics (orthanc-plugins/imgcloud/metrics.py) from a real forwarding queue
and real certificate files, as MetricsPublisher hands them to Orthanc."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imgcloud.forward_queue import ForwardQueue
from imgcloud.metrics import (
    ErrorCounts,
    MetricsPublisher,
    central_sample,
    edge_sample,
    orthanc_setter,
)

NOW = 1_800_000_000.0


def certificate(path: Path, days_left: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge")])
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_edge_values_from_the_queue_and_certificates(tmp_path: Path) -> None:
    clock = [NOW - 600.0]
    queue = ForwardQueue(tmp_path / "q.sqlite", clock=lambda: clock[0])
    queue.enqueue("old")  # queued 10 minutes ago, then failing
    clock[0] = NOW - 60.0
    queue.enqueue("new")
    queue.enqueue("done")
    queue.mark_delivered("done", 3, 100)
    queue.mark_failed("old", "central did not answer")
    certs = {
        "dicom_tls": certificate(tmp_path / "tls.pem", 30),
        "gateway": certificate(tmp_path / "gw.pem", 2),
        "missing": tmp_path / "absent.pem",  # unreadable: left out, not a failure
    }
    values = edge_sample(queue, certs, clock=lambda: NOW)()
    assert values == {
        "imgcloud_edge_queue_depth": 2.0,
        "imgcloud_edge_oldest_undelivered_seconds": 600.0,
        "imgcloud_edge_failing_deliveries": 1.0,
        "imgcloud_edge_deliveries_total": 1.0,
        "imgcloud_edge_cert_expiry_seconds": 2 * 86400.0,
    }


def test_an_empty_edge_has_no_certificate_value(tmp_path: Path) -> None:
    values = edge_sample(ForwardQueue(tmp_path / "q.sqlite"), {})()
    assert values["imgcloud_edge_queue_depth"] == 0
    assert values["imgcloud_edge_oldest_undelivered_seconds"] == 0
    assert "imgcloud_edge_cert_expiry_seconds" not in values


def test_object_store_errors_from_any_thread() -> None:
    errors = ErrorCounts()

    def reads() -> None:
        for _ in range(500):
            errors.add("read")

    threads = [threading.Thread(target=reads) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors.add("create")
    assert errors.by_kind() == {"read": 2000, "create": 1}
    assert central_sample(errors)() == {"imgcloud_central_object_store_errors_total": 2001.0}


class FakeOrthanc:
    """The two names orthanc_setter uses, recording the SDK calls."""

    class MetricsType:
        DEFAULT = "default"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, str]] = []

    def SetMetricsValue(self, name: str, value: float, kind: str) -> None:
        self.calls.append((name, value, kind))


def test_the_publisher_sets_every_value() -> None:
    sdk = FakeOrthanc()
    errors = ErrorCounts()
    publisher = MetricsPublisher(central_sample(errors), orthanc_setter(sdk))
    assert publisher.work() is False
    errors.add("remove")
    publisher.work()
    assert sdk.calls == [
        ("imgcloud_central_object_store_errors_total", 0.0, "default"),
        ("imgcloud_central_object_store_errors_total", 1.0, "default"),
    ]
