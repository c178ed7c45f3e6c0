"""Orthanc glue for the central archive: encrypted S3 storage area and a status route.

The only central module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.delivery import verify_against

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


def _stored(sop_uid: str) -> bytes | None:
    try:
        instance_id = orthanc.LookupInstance(sop_uid)
    except orthanc.OrthancException:
        return None
    if not instance_id:
        return None
    return bytes(orthanc.GetDicomForInstance(instance_id))


def _discard(sop_uid: str) -> None:
    """Remove a copy that does not match its sender's hash, so the resend can replace it."""
    orthanc.RestApiDelete(f"/instances/{orthanc.LookupInstance(sop_uid)}")
    orthanc.LogWarning(f"imaging-cloud: discarded instance {sop_uid}: hash mismatch")


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
    result = verify_against(_stored, claimed, _discard)
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
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
