"""Orthanc's own identifiers computed from an instance's DICOM identifiers, and what the
edge's C-STORE filter learnt of each instance, kept until its NEW_INSTANCE change comes.

Orthanc names a resource by the SHA-1 of its DICOM identifiers joined by "|" (the Orthanc
Book, "Orthanc identifiers"; Orthanc's DicomInstanceHasher): a study by
PatientID|StudyInstanceUID, an instance by PatientID|StudyInstanceUID|SeriesInstanceUID|
SOPInstanceUID, written as 40 hex digits in 5 groups of 8 joined by "-". A missing
PatientID is the empty string; the UIDs must be there (Orthanc refuses the file
otherwise). tests/integration/test_orthanc_ids.py checks this against a real Orthanc.

Why: the edge's change callback needs each new instance's study. Asking Orthanc's REST API
for it costs the modality's C-STORE about 4 ms of wall time per instance (the call
contends inside Orthanc with the C-STORE burst, bench/results/cstore-profile-2026-12-08.txt).
The C-STORE filter already parses the instance's tags, so it computes both identifiers, and
the change callback finds the study here.

What is trusted: nothing is decided on these values but which study to queue and which
bytes to compress. An entry is keyed by the instance identifier Orthanc will announce, so
an entry that does not match (an Orthanc that normalised a tag differently) is never
found. The filter runs before Orthanc stores: an instance whose store then failed leaves
an entry that would match a later arrival of the same instance by another way (a REST
upload, a retrieval, a push) and give it the failed C-STORE's bytes. So an entry is
taken only within MAX_AGE_S of its C-STORE (its change comes within milliseconds), and is
dropped after. Without one the change
callback asks Orthanc (`Arrivals.take` returns None), as it does for everything that
did not come through the filter (REST uploads, the plugin's own copies, retrievals) and
for everything after a restart (this map lives in memory only: nothing is lost with it,
the queue is durable and is written when NEW_INSTANCE comes).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENTRIES = 4096  # instances between their C-STORE and their NEW_INSTANCE (a few at a time)
RECEIVED_BYTES = 32 * 1024 * 1024  # received files held for the encoder, all entries together
MAX_AGE_S = 10.0  # an entry older than this is not used (see above: a store that failed)


def orthanc_hash(*identifiers: str) -> str:
    """Orthanc's identifier of the resource with these DICOM identifiers."""
    digest = hashlib.sha1("|".join(identifiers).encode("utf-8"), usedforsecurity=False)
    text = digest.hexdigest()
    return "-".join(text[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class InstanceIds:
    instance: str
    study: str

    @classmethod
    def from_tags(cls, tags: Mapping[str, Any]) -> InstanceIds | None:
        """From the simplified tags (keyword -> value, as GetInstanceSimplifiedJson gives
        them); None if a UID is missing or not a string (Orthanc would refuse the file)."""
        patient = tags.get("PatientID", "")
        uids = [tags.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not isinstance(patient, str) or not all(isinstance(u, str) and u for u in uids):
            return None
        study, series, sop = (str(u) for u in uids)
        return cls(orthanc_hash(patient, study, series, sop), orthanc_hash(patient, study))


@dataclass(frozen=True)
class Arrival:
    study: str
    received: bytes | None  # the file as the modality sent it, None if not held
    at: float = 0.0  # time.monotonic() of the C-STORE


class Arrivals:
    """Instance ID -> its study ID (and, within a byte budget, its received file), from the
    C-STORE filter until the change callback takes it. Thread-safe; bounded in entries and
    in bytes: the oldest entries go first, and a file over the budget is not held (its
    encoder reads it back from Orthanc)."""

    def __init__(
        self,
        entries: int = ENTRIES,
        received_bytes: int = RECEIVED_BYTES,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = entries
        self.received_bytes = received_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._map: OrderedDict[str, Arrival] = OrderedDict()
        self._held = 0  # bytes of the received files in the map

    def expect(self, ids: InstanceIds, size: int, read: Callable[[], bytes] | None) -> None:
        """The filter passed an instance of `size` bytes: remember its study and, if
        `read` is given and the budget allows, its received file (read() is called only
        then, outside the lock: it copies the file out of Orthanc). Never raises for a
        failed read: the filter's C-STORE must not fail for it."""
        data = None
        reserved = 0
        if read is not None and 0 < size <= self.received_bytes:
            with self._lock:
                if self._held + size <= self.received_bytes:
                    reserved = size  # before the copy: two filters at once cannot both fit
                    self._held += reserved
        try:
            if reserved and read is not None:
                data = read()
        except Exception:  # only an optimisation: the encoder reads it back
            data = None
        finally:
            with self._lock:
                self._held -= reserved
                self._drop(ids.instance)
                self._map[ids.instance] = Arrival(ids.study, data, self.clock())
                if data is not None:
                    self._held += len(data)
                while self._map and (
                    len(self._map) > self.entries or self._held > self.received_bytes
                ):
                    self._drop(next(iter(self._map)))

    def take(self, instance_id: str) -> Arrival | None:
        """What the filter learnt of this instance, once; None if it did not see it within
        `max_age_s` (older entries, this one's and any before it, are dropped)."""
        with self._lock:
            arrival = self._drop(instance_id)
            limit = self.clock() - self.max_age_s
            while self._map:  # oldest first: entries go in C-STORE order
                oldest = next(iter(self._map))
                if self._map[oldest].at >= limit:
                    break
                self._drop(oldest)
        return arrival if arrival is not None and arrival.at >= limit else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def _drop(self, instance_id: str) -> Arrival | None:
        """Remove an entry (lock held)."""
        arrival = self._map.pop(instance_id, None)
        if arrival is not None and arrival.received is not None:
            self._held -= len(arrival.received)
        return arrival
