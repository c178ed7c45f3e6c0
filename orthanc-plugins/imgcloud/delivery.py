"""Sending one study and proving it arrived: a SHA-256 per instance, confirmed by central.

A study counts as delivered only when central confirms every instance with the same hash.
Central is asked first, so only what it lacks is sent. An instance central lacks, or holds
with another hash (corrupted in transit; central removes such a copy), is sent again, a
bounded number of rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ForwardingError


@dataclass(frozen=True)
class Verification:
    confirmed: set[str] = field(default_factory=set)  # SOP Instance UIDs
    missing: set[str] = field(default_factory=set)
    mismatched: set[str] = field(default_factory=set)


@dataclass
class StudyDelivery:
    # study ID -> [(instance ID, SOP Instance UID)]
    list_instances: Callable[[str], list[tuple[str, str]]]
    read_instance: Callable[[str], bytes]  # instance ID -> the DICOM file as stored here
    send: Callable[[list[str]], None]  # instance IDs -> peer store to central
    verify: Callable[[dict[str, str]], Verification]  # SOP UID -> SHA-256
    rounds: int = 3

    def deliver(self, study_id: str) -> tuple[int, int]:
        """Send and confirm a study; returns (instances, bytes sent)."""
        instances = self.list_instances(study_id)
        if not instances:
            raise ForwardingError(f"study {study_id} has no instances on this edge")
        hashes: dict[str, str] = {}
        by_sop: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for instance_id, sop_uid in instances:
            data = self.read_instance(instance_id)
            sizes[sop_uid] = len(data)
            hashes[sop_uid] = hashlib.sha256(data).hexdigest()
            by_sop[sop_uid] = instance_id
        # Ask first: after a crash or an outage central may hold part of the study, and a
        # study this edge fetched from central is already there in full. Only what central
        # lacks (or holds with another hash) is sent.
        result = self.verify(hashes)
        pending = sorted(result.missing | result.mismatched)
        sent_bytes = 0
        for _ in range(self.rounds):
            if not pending and result.confirmed >= set(hashes):
                return len(instances), sent_bytes
            self.send([by_sop[s] for s in pending])
            sent_bytes += sum(sizes[s] for s in pending)
            result = self.verify(hashes)
            pending = sorted(result.missing | result.mismatched)
        if not pending and result.confirmed >= set(hashes):
            return len(instances), sent_bytes
        raise ForwardingError(
            f"study {study_id}: {len(pending)} of {len(hashes)} instances not confirmed by "
            f"central after {self.rounds} rounds"
        )


def verify_against(
    stored_hash: Callable[[str], str | None],
    claimed: dict[str, str],
    discard: Callable[[str], None],
) -> Verification:
    """Central side: compare what central received with the sender's hashes.

    `stored_hash(sop_uid)` is the SHA-256 recorded when central stored that instance, or
    None if it has none; a mismatching copy is discarded so the resend can replace it.
    """
    result = Verification()
    for sop_uid, sha256 in claimed.items():
        recorded = stored_hash(sop_uid)
        if recorded is None:
            result.missing.add(sop_uid)
        elif recorded == sha256:
            result.confirmed.add(sop_uid)
        else:
            result.mismatched.add(sop_uid)
            discard(sop_uid)
    return result
