"""Central discards a copy whose hash did not match its sender's (imgcloud.delivery.discard_copy).
Orthanc IDs derive from the UIDs: a resend stored while the copy is being discarded has the
same ID, and its fresh hash must survive, or central says "missing" for ever while its
store answers "already stored"."""

from __future__ import annotations

from imgcloud.delivery import discard_copy


def forget(hashes: dict[str, str], orthanc_id: str) -> None:
    hashes.pop(orthanc_id, None)


def test_a_resend_stored_during_the_discard_keeps_its_hash() -> None:
    hashes = {"oid": "bad"}
    held = {"oid"}

    def delete(orthanc_id: str) -> None:
        held.discard(orthanc_id)
        # the resend lands now, on another HTTP thread: stored again, hash recorded
        held.add(orthanc_id)
        hashes[orthanc_id] = "good"

    discard_copy("oid", lambda i: forget(hashes, i), delete)
    assert hashes == {"oid": "good"}
    assert held == {"oid"}


def test_a_discarded_copy_leaves_no_hash_behind() -> None:
    hashes = {"oid": "bad", "other": "ok"}
    held = {"oid", "other"}
    discard_copy("oid", lambda i: forget(hashes, i), held.discard)
    assert hashes == {"other": "ok"}
    assert held == {"other"}
