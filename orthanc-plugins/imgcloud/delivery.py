"""Sending one study and proving it arrived: a SHA-256 per instance, confirmed by central.

A study counts as delivered only when central confirms every instance with the same hash.
Central is asked first, so only what it lacks is sent. An instance central lacks, or holds
with another hash (corrupted in transit; central removes such a copy), is sent again, a
bounded number of rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ForwardingError


@dataclass(frozen=True)
class Verification:
    confirmed: set[str] = field(default_factory=set)  # SOP Instance UIDs
    missing: set[str] = field(default_factory=set)
    mismatched: set[str] = field(default_factory=set)


class HashCache(Protocol):
    """What the edge already knows of a study's instances: hash, and whether confirmed."""

    def known(self, study_id: str) -> dict[str, tuple[str, str, bool]]: ...  # iid -> sop, sha, ok
    def remember(self, study_id: str, rows: list[tuple[str, str, str]]) -> None: ...
    def confirm(self, instance_ids: list[str]) -> None: ...


class NoCache:
    def known(self, study_id: str) -> dict[str, tuple[str, str, bool]]:
        return {}

    def remember(self, study_id: str, rows: list[tuple[str, str, str]]) -> None:
        pass

    def confirm(self, instance_ids: list[str]) -> None:
        pass


@dataclass
class StudyDelivery:
    # study ID -> [(instance ID, SOP Instance UID)]
    list_instances: Callable[[str], list[tuple[str, str]]]
    read_instance: Callable[[str], bytes]  # instance ID -> the DICOM file as stored here
    # (instance ID, its bytes if still held, else None) -> bytes uploaded to central
    send: Callable[[list[tuple[str, bytes | None]]], int]
    verify: Callable[[dict[str, str]], Verification]  # SOP UID -> SHA-256
    cache: HashCache = field(default_factory=NoCache)
    rounds: int = 3
    # Instances read for hashing are kept for sending, up to this many bytes per round
    # (a compressed CT is ~40 MB); beyond it they are read again when sent.
    keep_bytes: int = 256 * 1024 * 1024
    readers: int = 1  # instances read (and so compressed) at the same time
    # instance IDs central has just confirmed (the edge then replaces their local copies)
    confirmed: Callable[[list[str]], None] = lambda _instance_ids: None

    def _read_all(self, unread: list[tuple[str, str]]) -> Iterator[bytes]:
        """Each instance's bytes, in order, `readers` at a time: reading may compress
        (imgcloud.edge_app), which then runs on every core. At most twice `readers`
        instances are read ahead of the hashing."""
        ids = [instance_id for instance_id, _ in unread]
        if self.readers <= 1 or len(ids) <= 1:
            yield from map(self.read_instance, ids)
            return
        window = 2 * self.readers
        with ThreadPoolExecutor(self.readers, thread_name_prefix="imgcloud-read") as pool:
            for start in range(0, len(ids), window):
                yield from pool.map(self.read_instance, ids[start : start + window])

    def deliver(self, study_id: str) -> tuple[int, int]:
        """Send and confirm what the edge holds of a study; returns (instances, bytes sent).

        Called again as more instances arrive: instances already confirmed are skipped
        without reading them, so a study streamed in many rounds is hashed once.
        """
        instances = self.list_instances(study_id)
        if not instances:
            raise ForwardingError(f"study {study_id} has no instances on this edge")
        known = self.cache.known(study_id)
        todo: dict[str, str] = {}  # SOP UID -> SHA-256, not yet confirmed by central
        by_sop: dict[str, str] = {}
        kept: dict[str, bytes] = {}
        fresh: list[tuple[str, str, str]] = []
        unread: list[tuple[str, str]] = []
        held = 0
        for instance_id, sop_uid in instances:
            by_sop[sop_uid] = instance_id
            entry = known.get(instance_id)
            if entry is not None and entry[0] == sop_uid:
                if not entry[2]:
                    todo[sop_uid] = entry[1]
                continue
            unread.append((instance_id, sop_uid))
        for (instance_id, sop_uid), data in zip(unread, self._read_all(unread), strict=True):
            todo[sop_uid] = hashlib.sha256(data).hexdigest()
            fresh.append((instance_id, sop_uid, todo[sop_uid]))
            if held + len(data) <= self.keep_bytes:
                kept[sop_uid] = data
                held += len(data)
        self.cache.remember(study_id, fresh)
        if not todo:
            return len(instances), 0
        # Ask first: after a crash or an outage central may hold part of the study, and a
        # study this edge fetched from central is already there in full. Only what central
        # lacks (or holds with another hash) is sent.
        result = self.verify(todo)
        pending = sorted(result.missing | result.mismatched)
        sent_bytes = 0
        for _ in range(self.rounds):
            if not pending and result.confirmed >= set(todo):
                break
            # a resend reads again: what is held may be what went wrong
            sent_bytes += self.send([(by_sop[s], kept.pop(s, None)) for s in pending])
            result = self.verify(todo)
            pending = sorted(result.missing | result.mismatched)
        if pending or not result.confirmed >= set(todo):
            self._confirm([by_sop[s] for s in result.confirmed])
            raise ForwardingError(
                f"study {study_id}: {len(pending)} of {len(todo)} instances not confirmed by "
                f"central after {self.rounds} rounds"
            )
        self._confirm([by_sop[s] for s in todo])
        return len(instances), sent_bytes

    def _confirm(self, instance_ids: list[str]) -> None:
        self.cache.confirm(instance_ids)
        self.confirmed(instance_ids)


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


def discard_copy(
    orthanc_id: str, forget_hash: Callable[[str], None], delete: Callable[[str], None]
) -> None:
    """Central side: remove a copy whose hash did not match, so a resend replaces it.

    The hash goes first: Orthanc IDs derive from the UIDs, so a resend stored between the
    two steps has the same ID, and forgetting after the delete would erase its fresh hash
    (central would answer "missing" for good, its store of the next resend "already
    stored", with no hash recorded). A resend that comes before the delete is only
    answered "already stored" and is sent again once the copy is gone."""
    forget_hash(orthanc_id)
    delete(orthanc_id)
