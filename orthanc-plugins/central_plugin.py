"""Orthanc glue for the central archive: encrypted S3 storage area and a status route.

The only central module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import hashlib
import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.delivery import discard_copy, verify_against
from imgcloud.errors import PluginError
from imgcloud.instance_hashes import HashRegistry, central_conninfo
from imgcloud.pushes import PushRegistry, PushRejected, validate_request

CONFIG, CONFIGURATION = glue_common.load("central")
STORAGE, _ARCHIVE = glue_common.register_storage("central", CONFIGURATION)


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
        discard_copy(orthanc_id, HASHES.forget, lambda i: orthanc.RestApiDelete(f"/instances/{i}"))
        orthanc.LogWarning(f"imaging-cloud: discarded instance {orthanc_id}: hash mismatch")


def _study_uids(sop_uids: set[str]) -> dict[str, str]:
    """The StudyInstanceUID of each SOP instance held here (one lookup per series)."""
    of_series: dict[str, str] = {}
    out: dict[str, str] = {}
    for sop_uid in sop_uids:
        orthanc_id = _orthanc_id(sop_uid)
        if not orthanc_id:
            continue
        series = json.loads(orthanc.RestApiGet(f"/instances/{orthanc_id}"))["ParentSeries"]
        if series not in of_series:
            study = json.loads(orthanc.RestApiGet(f"/series/{series}/study"))
            of_series[series] = study["MainDicomTags"].get("StudyInstanceUID", "")
        out[sop_uid] = of_series[series]
    return out


def _verify(output, uri, **request):
    """POST {"instances": {SOP Instance UID: SHA-256}[, "discard": false]} -> confirmed /
    missing / mismatched, and the study of every instance held here. A mismatching copy is
    discarded (so the resend replaces it) unless "discard" is false: the gateway's check
    asks that way first, and lets discards through only for the caller's own studies."""
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
        return
    try:
        body = json.loads(request["body"])
        claimed = body["instances"]
        discard = body.get("discard", True)
        valid = (
            isinstance(claimed, dict)
            and isinstance(discard, bool)
            and all(
                isinstance(k, str) and isinstance(v, str) and len(v) == 64
                for k, v in claimed.items()
            )
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        message = 'body must be {"instances": {"<SOP UID>": "<sha256 hex>"}, "discard": bool}'
        glue_common.send_status(output, 400, message)
        return
    result = verify_against(_stored_hash, claimed, _discard if discard else lambda _sop: None)
    output.AnswerBuffer(
        json.dumps(
            {
                "confirmed": sorted(result.confirmed),
                "missing": sorted(result.missing),
                "mismatched": sorted(result.mismatched),
                "studies": _study_uids(result.confirmed | result.mismatched),
            }
        ),
        "application/json",
    )


PUSHES = PushRegistry(central_conninfo(CONFIGURATION))


def _answer_error(output, status: int, message: str) -> None:
    body = json.dumps({"error": message})
    glue_common.send_status(output, status, body)


def _pushes(output, uri, **request):
    """POST: record a push of a study held here; GET ?to=CODE[&state=S]: list pushes."""
    try:
        if request["method"] == "POST":
            try:
                body = json.loads(request["body"])
            except ValueError:
                raise PushRejected("body must be JSON") from None
            push_request = validate_request(body)
            if not orthanc.LookupStudy(push_request["study_instance_uid"]):
                raise PushRejected("the study is not in the central archive", 404)
            push, created = PUSHES.create(push_request)
            if created:
                orthanc.LogWarning(
                    f"imaging-cloud: push {push['push_id']} recorded "
                    f"{push['from_institution']} -> {push['to_institution']}"
                )
            output.AnswerBuffer(json.dumps(push), "application/json")
        elif request["method"] == "GET":
            to = request["get"].get("to")
            if not to:
                raise PushRejected("query parameter 'to' (institution code) is required", 422)
            pushes = PUSHES.list(to, request["get"].get("state"))
            output.AnswerBuffer(json.dumps({"pushes": pushes}), "application/json")
        else:
            output.SendMethodNotAllowed("GET,POST")
    except PushRejected as exc:
        _answer_error(output, exc.status, str(exc))
    except orthanc.OrthancException:
        _answer_error(output, 404, "the study is not in the central archive")
    except PluginError as exc:
        _answer_error(output, 503, str(exc))


def _push(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    try:
        push = PUSHES.get(request["groups"][0])
    except PluginError as exc:
        _answer_error(output, 503, str(exc))
        return
    if push is None:
        _answer_error(output, 404, "no such push")
        return
    output.AnswerBuffer(json.dumps(push), "application/json")


def _push_state(output, uri, **request):
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
        return
    try:
        try:
            body = json.loads(request["body"])
        except ValueError:
            raise PushRejected("body must be JSON") from None
        push = PUSHES.change(request["groups"][0], body)
        output.AnswerBuffer(json.dumps(push), "application/json")
    except PushRejected as exc:
        _answer_error(output, exc.status, str(exc))
    except PluginError as exc:
        _answer_error(output, 503, str(exc))


orthanc.RegisterRestCallback("/imaging-cloud/pushes", _pushes)
orthanc.RegisterRestCallback("/imaging-cloud/pushes/([0-9a-f-]+)", _push)
orthanc.RegisterRestCallback("/imaging-cloud/pushes/([0-9a-f-]+)/state", _push_state)
orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.RegisterRestCallback("/imaging-cloud/verify", _verify)
orthanc.RegisterOnStoredInstanceCallback(_on_stored)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
