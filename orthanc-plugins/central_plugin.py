"""Orthanc glue for the central archive: encrypted S3 storage area and a status route.

The only central module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import hashlib
import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.delivery import verify_against
from imgcloud.instance_hashes import HashRegistry

CONFIG, CONFIGURATION = glue_common.load("central")
STORAGE = glue_common.register_storage("central", CONFIGURATION)


def _status(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(
        json.dumps({"role": CONFIG.role, "version": __version__, "storage": STORAGE}),
        "application/json",
    )


HASHES = HashRegistry.from_orthanc(CONFIGURATION)


def _on_stored(dicom, instance_id):
    """Record the SHA-256 of exactly what arrived (before encryption), for verification."""
    HASHES.record(instance_id, hashlib.sha256(dicom.GetInstanceData()).hexdigest())


def _orthanc_id(sop_uid: str) -> str | None:
    try:
        return orthanc.LookupInstance(sop_uid) or None
    except orthanc.OrthancException:
        return None


def _stored_hash(sop_uid: str) -> str | None:
    orthanc_id = _orthanc_id(sop_uid)
    return HASHES.lookup(orthanc_id) if orthanc_id else None


def _discard(sop_uid: str) -> None:
    """Remove a copy that does not match its sender's hash, so the resend can replace it."""
    orthanc_id = _orthanc_id(sop_uid)
    if orthanc_id:
        orthanc.RestApiDelete(f"/instances/{orthanc_id}")
        HASHES.forget(orthanc_id)
        orthanc.LogWarning(f"imaging-cloud: discarded instance {orthanc_id}: hash mismatch")


def _verify(output, uri, **request):
    """POST {"instances": {SOP Instance UID: SHA-256}} -> confirmed / missing / mismatched."""
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
        return
    try:
        claimed = json.loads(request["body"])["instances"]
        valid = isinstance(claimed, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in claimed.items()
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        message = 'body must be {"instances": {"<SOP UID>": "<sha256 hex>"}}'
        output.SendHttpStatus(400, message, len(message.encode()))  # (status, str, size) on 4.0
        return
    result = verify_against(_stored_hash, claimed, _discard)
    output.AnswerBuffer(
        json.dumps(
            {
                "confirmed": sorted(result.confirmed),
                "missing": sorted(result.missing),
                "mismatched": sorted(result.mismatched),
            }
        ),
        "application/json",
    )


orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.RegisterRestCallback("/imaging-cloud/verify", _verify)
orthanc.RegisterOnStoredInstanceCallback(_on_stored)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
