"""The edge tells the indexer which studies arrived (A2 -> B2): its study records, through
the HTTPS gateway, with the hospital gateway's Keycloak service-account token.

Only linking tags travel (institution, accession no., Study Instance UID, modalities,
counts, complete or not): the indexer has the patient's data from the hospital's own
registration. A record is marked sent only if it did not change meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

from .errors import ServiceCallError
from .http_call import Service
from .study_records import RecordStore
from .tokens import BearerAuth, ClientCredentials
from .worker import Worker

log = logging.getLogger(__name__)
# Answers that retrying the same record cannot change. 401/403 (a token or role problem),
# 404 (the institution not registered yet), 413/429 and every 5xx stop the round instead:
# later records would meet the same fate, and retrying later can succeed.
PERMANENT = frozenset({400, 409, 422})


class IndexerClient:
    def __init__(
        self,
        api_url: str,
        credentials: ClientCredentials,
        *,
        verify: Any = True,
        timeout_s: float = 15.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.credentials = credentials
        timeout = httpx.Timeout(timeout_s, connect=5)
        self.client = httpx.Client(verify=verify, timeout=timeout, auth=BearerAuth(credentials))
        self.service = Service(self.client, "indexer", ServiceCallError, timeout, expect={200})

    def report_arrival(self, institution: str, arrival: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api_url}/v1/institutions/{institution}/studies"
        return dict(self.service.json("POST", url, "the arrival", json=arrival))

    def grant(self, institution: str, study_uid: str, to_institution: str, kind: str) -> None:
        """Let another institution read one of this institution's studies (a push)."""
        url = f"{self.api_url}/v1/institutions/{institution}/studies/{study_uid}/grants"
        self.service.call("POST", url, "the grant", json=_grant_body(to_institution, kind))

    def send_edge_events(self, events: list[dict[str, Any]]) -> int:
        """Hand a batch of DICOM audit events to the indexer (idempotent on event_id)."""
        url = f"{self.api_url}/v1/audit/edge-events"
        answer = self.service.json("POST", url, "the audit events", json={"events": events})
        return int(answer.get("accepted", 0))


def _grant_body(to_institution: str, kind: str) -> dict[str, Any]:
    return {"to_institution": to_institution, "kind": kind}


def arrival_of(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "study_instance_uid": record["study_instance_uid"],
        "accession_number": record.get("accession_number") or None,
        "modalities": record.get("modalities", []),
        "series_count": record.get("series_count"),
        "instance_count": record.get("instance_count"),
        "complete": bool(record.get("complete")),
    }


class RecordSender(Worker):
    """Sends pending study records to the indexer; retries every `every_s` on failure."""

    name = "imgcloud-records"

    def __init__(
        self, records: RecordStore, indexer: IndexerClient, institution: str, every_s: float = 5
    ) -> None:
        super().__init__(every_s=every_s)
        self.records = records
        self.indexer = indexer
        self.institution = institution
        # One round at a time: the push route runs a round from an HTTP thread while this
        # sender's thread may be in one; both would report the same records at once.
        self._round_lock = threading.Lock()

    def work(self) -> bool:
        self.run_once()
        return False  # a round sends all that is pending; what fails waits for `every_s`

    def run_once(self) -> int:
        """Send the pending records (one round at a time); returns how many went."""
        with self._round_lock:
            return self._round_unlocked()

    def _round_unlocked(self) -> int:
        sent = 0
        for uid, record, recorded_at in self.records.pending_public():
            try:
                self.indexer.report_arrival(self.institution, arrival_of(record))
            except ServiceCallError as exc:
                if exc.status in PERMANENT:
                    # This record will never be accepted as it is (409: the study belongs
                    # to another hospital, e.g. it came here by a push): set it aside, so
                    # it cannot hold up the records behind it.
                    log.warning("study record %s set aside: %s", uid, exc)
                    self.records.mark_refused(uid, recorded_at)
                    continue
                log.warning("study record not accepted by the indexer yet: %s", exc)
                break
            self.records.mark_sent(uid, recorded_at)
            sent += 1
        return sent
