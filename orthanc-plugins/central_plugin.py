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
from imgcloud.pushes import PushCreate, PushRegistry, PushRejected, PushReport
from imgcloud.routes import Method, Reply, Request, Route, error
from imgcloud.verification import VerifyRequest

CONFIG, CONFIGURATION = glue_common.load("central")
STORAGE, _ARCHIVE = glue_common.register_storage("central", CONFIGURATION)


def _status(request: Request) -> Reply:
    return Reply(200, {"role": CONFIG.role, "version": __version__, "storage": STORAGE})


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


def _verify(request: Request) -> Reply:
    """POST {"instances": {SOP Instance UID: SHA-256}[, "discard": false]} -> confirmed /
    missing / mismatched, and the study of every instance held here. A mismatching copy is
    discarded (so the resend replaces it) unless "discard" is false: the gateway's check
    asks that way first, and lets discards through only for the caller's own studies."""
    body: VerifyRequest = request.body
    result = verify_against(
        _stored_hash, body.instances, _discard if body.discard else lambda _sop: None
    )
    return Reply(
        200,
        {
            "confirmed": sorted(result.confirmed),
            "missing": sorted(result.missing),
            "mismatched": sorted(result.mismatched),
            "studies": _study_uids(result.confirmed | result.mismatched),
        },
    )


PUSHES = PushRegistry(central_conninfo(CONFIGURATION))


def _registry_call(call) -> Reply:
    """Run a push registry call; its refusals and outages become answers."""
    try:
        return call()
    except PushRejected as exc:
        return error(exc.status, str(exc))
    except PluginError as exc:
        return error(503, str(exc))


def _create_push(request: Request) -> Reply:
    """POST: record a push of a study held here."""
    push_request: PushCreate = request.body

    def create() -> Reply:
        try:
            held = orthanc.LookupStudy(push_request.study_instance_uid)
        except orthanc.OrthancException:
            held = None
        if not held:
            raise PushRejected("the study is not in the central archive", 404)
        push, created = PUSHES.create(push_request.model_dump())
        if created:
            orthanc.LogWarning(
                f"imaging-cloud: push {push['push_id']} recorded "
                f"{push['from_institution']} -> {push['to_institution']}"
            )
        return Reply(200, push)

    return _registry_call(create)


def _list_pushes(request: Request) -> Reply:
    """GET ?to=CODE[&state=S]: the pushes to one institution."""
    to = request.query.get("to")
    if not to:
        return error(422, "query parameter 'to' (institution code) is required")
    return _registry_call(
        lambda: Reply(200, {"pushes": PUSHES.list(to, request.query.get("state"))})
    )


def _get_push(request: Request) -> Reply:
    push = _registry_call(lambda: Reply(200, PUSHES.get(request.groups[0])))
    return error(404, "no such push") if push.status == 200 and push.body is None else push


def _push_state(request: Request) -> Reply:
    return _registry_call(lambda: Reply(200, PUSHES.change(request.groups[0], request.body)))


glue_common.route(
    "/imaging-cloud/pushes",
    Route(GET=_list_pushes, POST=Method(_create_push, PushCreate, invalid_status=422)),
)
glue_common.route("/imaging-cloud/pushes/([0-9a-f-]+)", Route(GET=_get_push))
glue_common.route(
    "/imaging-cloud/pushes/([0-9a-f-]+)/state",
    Route(POST=Method(_push_state, PushReport, invalid_status=422)),
)
glue_common.route("/imaging-cloud/status", Route(GET=_status))
glue_common.route("/imaging-cloud/verify", Route(POST=Method(_verify, VerifyRequest)))
orthanc.RegisterOnStoredInstanceCallback(_on_stored)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
