"""Orthanc glue for a hospital edge: compress on arrival, forward stable studies to central
through a durable queue, confirm every instance by SHA-256, report status; fetch studies
back from the cloud, collect pushes from other hospitals, pull from the hospital PACS.

The only edge module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import datetime as dt
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.bandwidth import RateLimiter, mbps_to_bytes_per_s
from imgcloud.central_api import CentralApi
from imgcloud.compression import CompressionPolicy, compress
from imgcloud.delivery import StudyDelivery
from imgcloud.dicom_audit import AuditOutbox, AuditSender
from imgcloud.dicom_scp import DicomScp
from imgcloud.edge_requests import FetchRequest, PacsPullRequest, PushRequest, RequestRejected
from imgcloud.edge_rules import RulesRejected, RulesStore
from imgcloud.errors import CentralError, ConfigurationError, ServiceCallError
from imgcloud.forward_queue import ForwardQueue
from imgcloud.forwarding import QueueWorker
from imgcloud.indexer_client import IndexerClient, RecordSender
from imgcloud.local_api import LocalOrthanc
from imgcloud.retrieval import JobQueue, PullSchedule, RetrievalWorker, Retriever
from imgcloud.routes import Method, Reply, Request, Route, error
from imgcloud.study_records import RecordStore, build_record
from imgcloud.tokens import BearerAuth, ClientCredentials

CONFIG, CONFIGURATION = glue_common.load("edge")
if (CONFIGURATION.get("Python") or {}).get("AllowThreads") is not True:
    # Without it a worker thread keeps the GIL inside an SDK call while Orthanc's own
    # threads (a synchronous C-STORE job reading our storage area) wait for it.
    orthanc.LogError(
        "imaging-cloud edge plugin: invalid configuration: Python.AllowThreads: must be true "
        "(the plugin's worker threads call Orthanc's SDK)"
    )
    raise ConfigurationError("Python.AllowThreads must be true")
STORAGE, ARCHIVE = glue_common.register_storage("edge", CONFIGURATION)
if ARCHIVE is None:
    orthanc.LogError(
        "imaging-cloud edge plugin: invalid configuration: ImagingCloud.Storage: an edge needs "
        "its encrypted storage (its key ring also seals the patient data it records)"
    )
    raise ConfigurationError("ImagingCloud.Storage missing")
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


# The plugin's threads (forwarding, retrieval, the senders) call this Orthanc's REST API
# in-process through the SDK; the static configuration turns on Python.AllowThreads, so the
# GIL is released during those calls and Orthanc may call our storage area meanwhile.
LOCAL = LocalOrthanc(glue_common.in_process_transport(), CONFIGURATION.get("DicomAet", "ORTHANC"))
# An https peer is verified against Orthanc's own CA bundle setting (the hospital's CA).
CA_BUNDLE = CONFIGURATION.get("HttpsCACertificates") or True
KNOWN_MODALITIES = set(CONFIGURATION.get("DicomModalities") or {})
RULES.known_modalities = KNOWN_MODALITIES
LIMITER = RateLimiter(lambda: mbps_to_bytes_per_s(RULES.current.bandwidth_limit_mbps))
SEND_THREADS = 6  # uploads in flight: hides central's per-instance store latency

# Test hook: corrupt the first N uploads after they were hashed, as a bad link would, so
# the integration tests can prove central detects it and the edge resends. Never set in a
# deployment; loudly logged when it is.
_CORRUPT = {"left": int(os.environ.get("IMGCLOUD_TEST_CORRUPT_SENDS", "0") or 0)}
_CORRUPT_LOCK = threading.Lock()
if _CORRUPT["left"]:
    orthanc.LogWarning(
        f"imaging-cloud: TEST HOOK ACTIVE: the next {_CORRUPT['left']} uploads are corrupted"
    )


def _in_transit(data: bytes) -> bytes:
    with _CORRUPT_LOCK:
        if _CORRUPT["left"] <= 0:
            return data
        _CORRUPT["left"] -= 1
    position = len(data) * 3 // 4  # inside the pixel data of any image worth sending
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


def _send_one(item: tuple[str, bytes | None]) -> int:
    instance_id, data = item
    if data is None:
        data = LOCAL.read_instance(instance_id)
    LIMITER.acquire(len(data))
    CENTRAL.store(_in_transit(data))
    return len(data)


def _send(items: list[tuple[str, bytes | None]]) -> int:
    with ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="imgcloud-send") as pool:
        return sum(pool.map(_send_one, items))  # the first failure propagates


def _gateway_account() -> tuple[dict, ClientCredentials] | None:
    """The hospital gateway's Keycloak service account, when the configuration has one."""
    section = CONFIGURATION["ImagingCloud"].get("Indexer")
    if not section:
        return None
    try:
        secret = json.loads(Path(section["ClientSecretFile"]).read_text())["ClientSecret"]
        credentials = ClientCredentials(
            section["TokenUrl"], section["ClientId"], secret, verify=CA_BUNDLE
        )
    except (OSError, KeyError, ValueError) as exc:
        orthanc.LogError(
            f"imaging-cloud edge plugin: invalid configuration: ImagingCloud.Indexer: "
            f"{type(exc).__name__} {exc}"
        )
        raise
    return section, credentials


ACCOUNT = _gateway_account()
# Central through the gateway with the gateway account's token when the peer has no
# password of its own; directly with the peer's credentials otherwise.
CENTRAL = CentralApi(
    PEER_URL,
    BearerAuth(ACCOUNT[1]) if ACCOUNT and not PEER.get("Username") else PEER_AUTH,
    verify=CA_BUNDLE,
)
RECORDS = RecordStore(
    Path(str(CONFIG.queue_file)).with_name("study-records.sqlite"),
    ARCHIVE.seal_record,
    ARCHIVE.open_record,
)
QUEUE = ForwardQueue(Path(str(CONFIG.queue_file)), retry_max_s=CONFIG.forward_retry_max_s)
DELIVERY = StudyDelivery(
    LOCAL.list_instances, LOCAL.read_instance, _send, CENTRAL.verify, cache=QUEUE
)


def _indexer_sender() -> RecordSender | None:
    """The study records go to the indexer when the configuration says where and how."""
    if ACCOUNT is None:
        return None
    section, credentials = ACCOUNT
    client = IndexerClient(section["ApiUrl"], credentials, verify=CA_BUNDLE)
    return RecordSender(RECORDS, client, str(CONFIG.institution))


SENDER = _indexer_sender()


def _record_and_deliver(study_id: str) -> tuple[int, int]:
    """Record the study's tags for the indexer (personal data sealed), then forward it."""
    record = build_record(
        str(CONFIG.institution), LOCAL.study_tags(study_id), LOCAL.study_series(study_id)
    )
    RECORDS.save(study_id, record)
    result = DELIVERY.deliver(study_id)
    if SENDER is not None:
        SENDER.notify()
    return result


WORKER = QueueWorker(
    QUEUE,
    _record_and_deliver,
    may_forward=lambda: RULES.current.may_forward(dt.datetime.now()),  # the edge's local time
    is_stable=LOCAL.is_stable,
)
JOBS = JobQueue(
    Path(str(CONFIG.queue_file)).with_name("jobs.sqlite"),
    retry_max_s=CONFIG.forward_retry_max_s,
)


def _schedules() -> list[PullSchedule]:
    return [
        PullSchedule(
            pull.name,
            pull.every_minutes * 60,
            pull.model_dump(include={"source_aet", "modalities", "days_back"}),
        )
        for pull in RULES.current.pacs_pulls
    ]


RETRIEVER = RetrievalWorker(
    JOBS,
    Retriever(CENTRAL, LOCAL, str(CONFIG.institution)),
    schedules=_schedules,
    push_poll_s=lambda: RULES.current.push_poll_seconds,
    push_target=lambda: RULES.current.deliver_pushes_to or CONFIG.hospital_pacs,
)


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        # Stream: the study is queued (durably) at its first instance and goes to central
        # while the modality is still sending; each arrival marks it to go again.
        QUEUE.forget_instance(resource_id)
        study = json.loads(orthanc.RestApiGet(f"/instances/{resource_id}/study"))
        QUEUE.enqueue(study["ID"])
        WORKER.notify()
    elif change_type == orthanc.ChangeType.STABLE_STUDY:
        QUEUE.enqueue(resource_id)
        WORKER.notify()
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        WORKER.start()  # resumes whatever a restart or crash left queued or sending
        RETRIEVER.start()
        for sender in (SENDER, AUDIT_SENDER):
            if sender is not None:
                sender.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        WORKER.stop()
        RETRIEVER.stop()
        for sender in (SENDER, AUDIT_SENDER):
            if sender is not None:
                sender.stop()


def _status(request: Request) -> Reply:
    return Reply(
        200,
        {
            "role": CONFIG.role,
            "institution": CONFIG.institution,
            "version": __version__,
            "storage": STORAGE,
            "compression": RULES.current.compression,
            "rules_version": RULES.current.version,
            "forwarding_now": RULES.current.may_forward(dt.datetime.now()),
            **QUEUE.counters(),
            **AUDIT.counters(),
        },
    )


def _new_job(kind: str, request: Request) -> Reply:
    parsed = request.body
    named = {getattr(parsed, "deliver_to", None), getattr(parsed, "source_aet", None)}
    unknown = sorted(aet for aet in named - KNOWN_MODALITIES if aet)
    if unknown:
        return error(422, f"AE titles not configured on this edge: {', '.join(unknown)}")
    job = JOBS.add(kind, parsed.model_dump(exclude_none=True))
    RETRIEVER.notify()
    return Reply(200, job.as_dict())


def _job(request: Request) -> Reply:
    job = JOBS.get(request.groups[0])
    return error(404, "no such job") if job is None else Reply(200, job.as_dict())


def _pushes(request: Request) -> Reply:
    """POST {study_instance_uid, to_institution, deliver_to?}: push a study to another
    hospital (跨院推送); central records it and the receiving edge collects it."""
    push = request.body
    try:
        if push.to_institution == CONFIG.institution:
            raise RequestRejected("to_institution: must differ from this hospital's code")
        if SENDER is not None:
            # the indexer must know the study is ours first (records waiting go out now):
            # central's lookup through the gateway finds only studies this hospital may read
            SENDER.run_once()
        if CENTRAL.find_study(push.study_instance_uid) is None:
            raise RequestRejected("the study is not in the central archive", 404)
        if SENDER is not None:
            # the receiving hospital may then read the study through the gateway too
            SENDER.indexer.grant(
                str(CONFIG.institution), push.study_instance_uid, push.to_institution, "push"
            )
        answer = CENTRAL.create_push(
            push.model_dump(exclude_none=True) | {"from_institution": CONFIG.institution}
        )
    except RequestRejected as exc:
        return error(exc.status, str(exc))
    except ServiceCallError as exc:
        return error(exc.status if exc.status in (404, 409, 422) else 502, str(exc))
    return Reply(200, answer)


def _push(request: Request) -> Reply:
    """GET a push's state as central records it (either hospital may ask)."""
    try:
        return Reply(200, CENTRAL.get_push(request.groups[0]))
    except CentralError as exc:
        return error(404 if exc.status == 404 else 502, str(exc))


def _study_forwarding(request: Request) -> Reply:
    status = QUEUE.status(request.groups[0])
    if status is None:
        return Reply(404, "this study has not been queued for forwarding")
    return Reply(200, status.as_dict())


def _study_record(request: Request) -> Reply:
    """GET the tags recorded for a study (patient data opened for the hospital's own API)."""
    record = RECORDS.get(request.groups[0])
    return error(404, "no record for this study yet") if record is None else Reply(200, record)


def _rules_get(request: Request) -> Reply:
    return Reply(200, RULES.current.model_dump_json())


def _rules_put(request: Request) -> Reply:
    """PUT a new rules document (validated, newer version, persisted)."""
    try:
        rules = RULES.replace(request.body)
    except RulesRejected as exc:
        return Reply(400, f"rules refused, version {RULES.current.version} stays in force: {exc}")
    WORKER.notify()
    orthanc.LogWarning(f"imaging-cloud: edge rules version {rules.version} in force")
    return Reply(200, rules.model_dump_json())


def _json_body(handler, model) -> Method:
    return Method(handler, model, invalid_status=422, json_status=422)


AUDIT = AuditOutbox(
    Path(str(CONFIG.queue_file)).with_name("dicom-audit.sqlite"),
    ARCHIVE.seal_record,
    ARCHIVE.open_record,
)
AUDIT_SENDER = AuditSender(AUDIT, SENDER.indexer) if SENDER is not None else None
SCP = DicomScp(
    CONFIGURATION,
    LOCAL,
    RETRIEVER.retriever.fetch,
    AUDIT,
    notify=AUDIT_SENDER.notify if AUDIT_SENDER else lambda: None,
    query_retrieve_aets=CONFIG.query_retrieve_aets,
)


def _on_find(answers, query, issuer_aet, called_aet):
    """C-FIND from any known AE: refused unless ImagingCloud.QueryRetrieveAETs names it, else
    answered from this edge's index; audited either way (imgcloud.dicom_scp). Raising fails
    the C-FIND."""
    asked = [
        (query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i), query.GetFindQueryValue(i))
        for i in range(query.GetFindQuerySize())
    ]

    def add(tags: dict) -> None:
        dicom = orthanc.CreateDicom(json.dumps(tags), None, orthanc.CreateDicomFlags.NONE)
        answers.FindAddAnswer(dicom)

    SCP.find(issuer_aet, called_aet, asked, add, answers.FindMarkIncomplete)


def _on_move(**request):
    """C-MOVE from any known AE, gated and audited as C-FIND (imgcloud.dicom_scp). Python
    plugin 4.0 leaks a little memory per C-MOVE handled here (fixed in 4.1); C-MOVEs are
    rare next to C-STOREs. Raising makes Orthanc answer the C-MOVE with a failure."""
    SCP.move(request)


orthanc.RegisterReceivedInstanceCallback(_on_received)
orthanc.RegisterFindCallback(_on_find)
orthanc.RegisterMoveCallback(_on_move)
orthanc.RegisterOnChangeCallback(_on_change)
glue_common.route("/imaging-cloud/rules", Route(GET=_rules_get, PUT=_rules_put))
glue_common.route("/imaging-cloud/status", Route(GET=_status))
glue_common.route("/imaging-cloud/studies/([0-9a-f-]+)/forwarding", Route(GET=_study_forwarding))
glue_common.route("/imaging-cloud/studies/([0-9a-f-]+)/record", Route(GET=_study_record))
glue_common.route(
    "/imaging-cloud/retrievals",
    Route(POST=_json_body(lambda r: _new_job("fetch", r), FetchRequest)),
)
glue_common.route(
    "/imaging-cloud/pacs-pulls",
    Route(POST=_json_body(lambda r: _new_job("pacs-pull", r), PacsPullRequest)),
)
glue_common.route("/imaging-cloud/jobs/([0-9a-f-]+)", Route(GET=_job))
glue_common.route("/imaging-cloud/pushes", Route(POST=_json_body(_pushes, PushRequest)))
glue_common.route("/imaging-cloud/pushes/([0-9a-f-]+)", Route(GET=_push))
orthanc.LogWarning(
    f"imaging-cloud edge plugin {__version__} loaded for {CONFIG.institution}, storage {STORAGE}"
)
