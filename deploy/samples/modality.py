"""A simulated modality: sends datasets to a DICOM node by C-STORE (pynetdicom)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
)

STORAGE_CLASSES = (CTImageStorage, MRImageStorage, DigitalXRayImageStorageForPresentation)
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class AssociationRefused(Exception):
    """The receiving node rejected or aborted the association."""


@dataclass
class StoreResult:
    sent: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> DIMSE status

    @property
    def ok(self) -> bool:
        return not self.failed


def send(
    datasets: Iterable[Dataset],
    *,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "DEMO_CT",
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> StoreResult:
    """C-STORE every dataset over one association (DICOM TLS when `tls` is given)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class, [EXPLICIT_LE])
    tls_args = (tls, host) if tls else None
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls_args)
    if not assoc.is_established:
        raise AssociationRefused(
            f"{called_aet} at {host}:{port} refused the association from {calling_aet}"
        )
    result = StoreResult()
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else -1
            if code == 0x0000:
                result.sent += 1
            else:
                result.failed[str(ds.SOPInstanceUID)] = code
    finally:
        assoc.release()
    return result


def tls_context(ca_cert: str, cert: str, key: str) -> ssl.SSLContext:
    """Client-side DICOM TLS: trust the given CA and present this modality's certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_cert)
    context.load_cert_chain(cert, key)
    return context
