"""A stand-in for a hospital PACS (pynetdicom): it receives C-STORE, answers study-level
C-FIND and performs C-MOVE to known AE titles. The demo and the tests run it where the
edges' TLS sidecars reach `HOSP_PACS` (EDGE_X_PACS_PORT in var/stack.env), always on
loopback. With `tls`, it speaks only mutual TLS, as server and as client (its C-MOVE
sub-operations and its own C-MOVE requests): the edges let the PACS AE title in only
through their TLS listener.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from .modality import EXPLICIT_LE, STORAGE_CLASSES

IMPLICIT_LE = "1.2.840.10008.1.2"
SUCCESS = 0x0000
PENDING = 0xFF00
UNKNOWN_DESTINATION = 0xA801
IDENTIFIER_MISMATCH = 0xA900
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


def _date_matches(value: str, wanted: str) -> bool:
    if not wanted:
        return True
    if "-" in wanted:
        first, _, last = wanted.partition("-")
        return (not first or value >= first) and (not last or value <= last)
    return value == wanted


@dataclass(frozen=True)
class PacsTls:
    """The PACS's certificate and the CA it trusts, for mutual DICOM TLS both ways."""

    ca_cert: str
    cert: str
    key: str

    def server(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_cert)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED  # mutual: no certificate, no association
        context.load_cert_chain(self.cert, self.key)
        return context

    def client(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_cert)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


@dataclass
class HospitalPacs:
    aet: str
    port: int
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)  # AET -> host, port
    tls: PacsTls | None = None  # mutual TLS only (as server and client), else plain TCP
    received: list[Dataset] = field(default_factory=list)  # what was C-STOREd to it
    held: dict[str, Dataset] = field(default_factory=dict)  # SOP UID -> dataset it serves
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, datasets: Iterable[Dataset]) -> None:
        with self._lock:
            for ds in datasets:
                self.held[str(ds.SOPInstanceUID)] = ds

    def received_uids(self) -> set[str]:
        with self._lock:
            return {str(ds.SOPInstanceUID) for ds in self.received}

    # -- handlers -----------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return SUCCESS

    def _studies(self, query: Dataset) -> list[list[Dataset]]:
        wanted_modalities = set(str(query.get("ModalitiesInStudy", "") or "").split("\\")) - {""}
        by_study: dict[str, list[Dataset]] = {}
        with self._lock:
            for ds in self.held.values():
                by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        matches = []
        for uid, instances in sorted(by_study.items()):
            first = instances[0]
            checks = (
                (not query.get("StudyInstanceUID") or uid == query.StudyInstanceUID),
                (not query.get("PatientID") or first.PatientID == query.PatientID),
                (
                    not query.get("AccessionNumber")
                    or first.get("AccessionNumber") == query.AccessionNumber
                ),
                _date_matches(str(first.get("StudyDate", "")), str(query.get("StudyDate", ""))),
                (not wanted_modalities or str(first.Modality) in wanted_modalities),
            )
            if all(checks):
                matches.append(instances)
        return matches

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        if str(query.get("QueryRetrieveLevel", "")) != "STUDY":
            yield IDENTIFIER_MISMATCH, None
            return
        for instances in self._studies(query):
            first = instances[0]
            answer = Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            if "SpecificCharacterSet" in first:  # Chinese names need their character set
                answer.SpecificCharacterSet = first.SpecificCharacterSet
            for keyword in STUDY_KEYS:
                if keyword == "ModalitiesInStudy":
                    answer.ModalitiesInStudy = sorted({str(d.Modality) for d in instances})
                elif keyword == "NumberOfStudyRelatedInstances":
                    answer.NumberOfStudyRelatedInstances = len(instances)
                elif keyword in first:
                    setattr(answer, keyword, first.get(keyword))
            yield PENDING, answer

    def _on_move(self, event: Any) -> Iterator[Any]:
        destination = self.destinations.get(event.move_destination.strip())
        if destination is None:
            yield None, None
            return
        host, port = destination
        if self.tls is None:
            yield host, port
        else:  # pynetdicom passes these to the sub-operations' associate()
            yield host, port, {"tls_args": (self.tls.client(), host)}
        instances = [d for study in self._studies(event.identifier) for d in study]
        yield len(instances)
        for ds in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield PENDING, ds

    # -- as a client ------------------------------------------------------------------------
    def move(self, host: str, port: int, called_aet: str, study_uid: str, destination: str) -> int:
        """Ask a node (an edge) to C-MOVE a study to `destination`; the final DIMSE status."""
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        tls_args = (self.tls.client(), host) if self.tls else None
        assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls_args)
        if not assoc.is_established:
            raise ConnectionError(f"{called_aet} refused the association")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        status = -1
        try:
            for reply, _identifier in assoc.send_c_move(
                query, destination, StudyRootQueryRetrieveInformationModelMove
            ):
                if reply and "Status" in reply:
                    status = int(reply.Status)
        finally:
            assoc.release()
        return status

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> HospitalPacs:
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.supported_contexts = StoragePresentationContexts
        for context in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelMove,
        ):
            ae.add_supported_context(context)
        # the sub-operations of C-MOVE send what the PACS holds, as stored
        for sop_class in STORAGE_CLASSES:
            ae.add_requested_context(sop_class, [EXPLICIT_LE, IMPLICIT_LE])
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
        ]
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self.tls.server() if self.tls else None,
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> HospitalPacs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
