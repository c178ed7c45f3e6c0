"""Orthanc glue for a hospital edge: compress on arrival, forward stable studies to central
through a durable queue, confirm every instance by SHA-256, report status.

The only edge module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import datetime as dt
import json
from pathlib import Path

import glue_common
import httpx
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.compression import CompressionPolicy, compress
from imgcloud.delivery import StudyDelivery, Verification
from imgcloud.edge_rules import RulesRejected, RulesStore
from imgcloud.errors import ConfigurationError, ForwardingError
from imgcloud.forward_queue import ForwardQueue
from imgcloud.forwarding import QueueWorker

CONFIG, CONFIGURATION = glue_common.load("edge")
STORAGE = glue_common.register_storage("edge", CONFIGURATION)
try:
    COMPRESSION = CompressionPolicy.from_name(
        CONFIGURATION["ImagingCloud"].get("Compression", "jpeg-ls-lossless")
    )
except ConfigurationError as exc:
    orthanc.LogError(f"imaging-cloud edge plugin: invalid configuration: {exc}")
    raise
RULES = RulesStore(Path(str(CONFIG.queue_file)).with_name("edge-rules.json"), COMPRESSION.name)
PEER = CONFIGURATION["OrthancPeers"][CONFIG.forward_peer]
PEER_URL = PEER["Url"].rstrip("/")
PEER_AUTH = (PEER.get("Username", ""), PEER.get("Password", ""))


def _transcode(dicom: bytes, transfer_syntax: str) -> bytes:
    return orthanc.TranscodeDicomInstance(dicom, transfer_syntax).SerializeDicomInstance()


def _on_received(dicom, origin):
    """Compress every instance losslessly on arrival, before it is stored or forwarded."""
    compressed = compress(bytes(dicom), RULES.current.compression_policy, _transcode)
    if compressed is None:
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    return orthanc.ReceivedInstanceAction.MODIFY, compressed


# The forwarding worker runs in its own Python thread. Python plugin 4.0 keeps the GIL
# during every orthanc.* call, and Orthanc calls back into Python (our storage area) while
# holding its own locks: an SDK call from this thread can deadlock against them. So the
# worker uses this Orthanc's REST API over loopback, blocking in socket I/O without the GIL.
SELF_URL = f"http://127.0.0.1:{CONFIGURATION.get('HttpPort', 8042)}"
SELF_AUTH = next(iter((CONFIGURATION.get("RegisteredUsers") or {"": ""}).items()))
SELF = httpx.Client(
    base_url=SELF_URL,
    auth=SELF_AUTH,
    timeout=httpx.Timeout(600, connect=5),
    limits=httpx.Limits(keepalive_expiry=0.5),
)


def _list_instances(study_id: str) -> list[tuple[str, str]]:
    try:
        response = SELF.get(f"/studies/{study_id}/instances")
    except httpx.HTTPError as exc:
        raise ForwardingError(f"local Orthanc did not answer: {type(exc).__name__}") from exc
    if response.status_code == 404:
        raise ForwardingError(f"study {study_id} is no longer on this edge")
    response.raise_for_status()
    return [(i["ID"], i["MainDicomTags"]["SOPInstanceUID"]) for i in response.json()]


def _read_instance(instance_id: str) -> bytes:
    try:
        response = SELF.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ForwardingError(f"cannot read instance {instance_id}: {exc}") from exc
    return response.content


def _send(instance_ids: list[str]) -> None:
    try:
        response = SELF.post(
            f"/peers/{CONFIG.forward_peer}/store",
            json={"Resources": instance_ids, "Synchronous": True},
        )
    except httpx.HTTPError as exc:
        raise ForwardingError(f"peer store did not answer: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise ForwardingError(f"peer store to central failed: HTTP {response.status_code}")


def _verify(hashes: dict[str, str]) -> Verification:
    try:
        response = httpx.post(
            f"{PEER_URL}/imaging-cloud/verify",
            json={"instances": hashes},
            auth=PEER_AUTH,
            timeout=httpx.Timeout(120, connect=5),
        )
        response.raise_for_status()
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ForwardingError(f"central did not confirm: {type(exc).__name__}") from exc
    return Verification(set(answer["confirmed"]), set(answer["missing"]), set(answer["mismatched"]))


QUEUE = ForwardQueue(Path(str(CONFIG.queue_file)), retry_max_s=CONFIG.forward_retry_max_s)
WORKER = QueueWorker(
    QUEUE,
    StudyDelivery(_list_instances, _read_instance, _send, _verify).deliver,
    may_forward=lambda: RULES.current.may_forward(dt.datetime.now()),  # the edge's local time
)


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        QUEUE.enqueue(resource_id)
        WORKER.notify()
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        WORKER.start()  # resumes whatever a restart or crash left queued or sending
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        WORKER.stop()


def _status(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    body = {
        "role": CONFIG.role,
        "institution": CONFIG.institution,
        "version": __version__,
        "storage": STORAGE,
        "compression": RULES.current.compression,
        "rules_version": RULES.current.version,
        "forwarding_now": RULES.current.may_forward(dt.datetime.now()),
        **QUEUE.counters(),
    }
    output.AnswerBuffer(json.dumps(body), "application/json")


def _study_forwarding(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    status = QUEUE.status(request["groups"][0])
    if status is None:
        message = "this study has not been queued for forwarding"
        output.SendHttpStatus(404, message, len(message.encode()))  # (status, str, size) on 4.0
        return
    output.AnswerBuffer(json.dumps(status.as_dict()), "application/json")


def _rules(output, uri, **request):
    """GET the rules in force; PUT a new document (validated, newer version, persisted)."""
    if request["method"] == "GET":
        output.AnswerBuffer(RULES.current.model_dump_json(), "application/json")
        return
    if request["method"] != "PUT":
        output.SendMethodNotAllowed("GET,PUT")
        return
    try:
        rules = RULES.replace(request["body"])
    except RulesRejected as exc:
        message = f"rules refused, version {RULES.current.version} stays in force: {exc}"
        output.SendHttpStatus(400, message, len(message.encode()))  # (status, str, size) on 4.0
        return
    WORKER.notify()
    orthanc.LogWarning(f"imaging-cloud: edge rules version {rules.version} in force")
    output.AnswerBuffer(rules.model_dump_json(), "application/json")


orthanc.RegisterReceivedInstanceCallback(_on_received)
orthanc.RegisterRestCallback("/imaging-cloud/rules", _rules)
orthanc.RegisterOnChangeCallback(_on_change)
orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.RegisterRestCallback("/imaging-cloud/studies/([0-9a-f-]+)/forwarding", _study_forwarding)
orthanc.LogWarning(
    f"imaging-cloud edge plugin {__version__} loaded for {CONFIG.institution}, storage {STORAGE}"
)
