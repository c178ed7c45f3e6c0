"""A hospital edge, assembled: compression before forwarding (worker processes, outside
the modality's C-STORE), the durable forwarding queue to central with SHA-256
confirmation, study records for the indexer, retrieval and pushes, and the audited
C-FIND / C-MOVE SCP.

Plain Python: edge_plugin.py builds one EdgeApp with the few Orthanc calls it needs
(the in-process REST transport, DCMTK transcoding for the non-JPEG-LS policies) and passes
Orthanc's callbacks to it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from . import __version__
from .bandwidth import RateLimiter, mbps_to_bytes_per_s
from .central_api import CentralApi
from .compression import compress
from .compression_pool import JPEG_LS_LOSSLESS, CompressionPool, default_workers
from .delivery import StudyDelivery
from .dicom_audit import AuditOutbox, AuditSender
from .dicom_scp import DicomScp
from .edge_rules import RulesStore
from .fleet_agent import ErrorCounter, FleetAgent, FleetClient, RulesPoller
from .forward_queue import ForwardQueue
from .forwarding import QueueWorker
from .in_place import InPlaceCompressor
from .indexer_client import IndexerClient, RecordSender
from .local_api import LocalOrthanc
from .orthanc_ids import Arrivals, InstanceIds
from .plugin_settings import EdgeSettings
from .release_bundle import load_public_key
from .retrieval import JobQueue, PullSchedule, RetrievalWorker, Retriever
from .storage.archive import EncryptedArchive
from .study_records import RecordStore, build_record
from .tokens import BearerAuth, ClientCredentials
from .upgrade import ReleaseStore, TrialCheck, Upgrader, running_release
from .worker import Worker, stop_all

log = logging.getLogger(__name__)
# C-STORE warning "coercion of data elements": what is held is not what was sent (PS3.4
# B.2.3); DICOM has no status for a duplicate, and a failure would make the sender retry
DUPLICATE_STATUS = 0xB000
SEND_THREADS = 6  # uploads in flight: hides central's per-instance store latency
Transcode = Callable[[bytes, str], bytes]


class EdgeApp:
    """Every part of the edge, wired together from its settings."""

    def __init__(
        self,
        settings: EdgeSettings,
        archive: EncryptedArchive,
        storage: str,
        transport: httpx.BaseTransport,
        transcode: Transcode,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.institution = str(settings.plugin.institution)
        self.transcode = transcode
        self.pool = CompressionPool(settings.compression_workers or default_workers())
        data = settings.data_dir
        self.rules = RulesStore(data / "edge-rules.json", settings.compression.name)
        # The plugin's threads call this Orthanc's REST API in-process through the SDK
        # (Python.AllowThreads releases the GIL meanwhile).
        self.local = LocalOrthanc(transport, settings.dicom_aet)
        self.in_place = InPlaceCompressor(
            self.local.read_instance,
            self.local.replace,
            self.compressed,
            self.pool.workers + 1,
            defer_s=settings.replace_after_idle_s,
            keep_bytes=settings.keep_compressed_mb * 1024 * 1024,
            exists=self.local.has_instance,
        )
        # what the C-STORE filter learnt of each instance, for its NEW_INSTANCE change
        self.arrivals = Arrivals()
        self.known_modalities = set(settings.dicom_modalities)
        self.rules.known_modalities = self.known_modalities
        self.limiter = RateLimiter(
            lambda: mbps_to_bytes_per_s(self.rules.current.bandwidth_limit_mbps)
        )
        verify = settings.ca_bundle
        credentials = None
        if settings.indexer is not None:
            indexer = settings.indexer
            secret = indexer.client_secret.get_secret_value()
            credentials = ClientCredentials(
                indexer.token_url, indexer.client_id, secret, verify=verify
            )
        # Central through the gateway with the gateway account's token when the peer has
        # no password of its own; directly with the peer's credentials otherwise.
        peer = settings.peer
        auth: Any = BearerAuth(credentials) if credentials and not peer.username else peer.auth
        self.central = CentralApi(
            peer.base_url, auth, verify=verify, keepalive_s=settings.central_keepalive_s
        )
        self.records = RecordStore(
            data / "study-records.sqlite", archive.seal_record, archive.open_record
        )
        retry_max_s = settings.plugin.forward_retry_max_s
        self.queue = ForwardQueue(settings.queue_file, retry_max_s=retry_max_s)
        self.delivery = StudyDelivery(
            self.local.list_instances,
            self.read_for_forwarding,
            self.send,
            self.central.verify,
            cache=self.queue,
            readers=self.pool.workers + 1,  # one more: each read also waits for Orthanc
            confirmed=self.in_place.confirmed,  # its local copies may now be replaced
        )
        self.sender: RecordSender | None = None
        if credentials is not None and settings.indexer is not None:
            client = IndexerClient(settings.indexer.api_url, credentials, verify=verify)
            self.sender = RecordSender(self.records, client, self.institution)
        self.worker = QueueWorker(
            self.queue,
            self.record_and_deliver,
            may_forward=lambda: self.rules.current.may_forward(dt.datetime.now()),  # local
            is_stable=self.local.is_stable,
        )
        self.jobs = JobQueue(data / "jobs.sqlite", retry_max_s=retry_max_s)
        self.retriever = RetrievalWorker(
            self.jobs,
            Retriever(self.central, self.local, self.institution),
            schedules=self.schedules,
            push_poll_s=lambda: self.rules.current.push_poll_seconds,
            push_target=lambda: (
                self.rules.current.deliver_pushes_to or settings.plugin.hospital_pacs
            ),
        )
        self.audit = AuditOutbox(
            data / "dicom-audit.sqlite", archive.seal_record, archive.open_record
        )
        self.audit_sender = (
            AuditSender(self.audit, self.sender.indexer) if self.sender is not None else None
        )
        self._fleet(settings, credentials)
        self.scp = DicomScp(
            settings.dicom_scp_configuration(),
            self.local,
            self.retriever.retriever.fetch,
            self.audit,
            notify=self.audit_sender.notify if self.audit_sender else lambda: None,
            query_retrieve_aets=settings.plugin.query_retrieve_aets,
        )

    def _fleet(self, settings: EdgeSettings, credentials: ClientCredentials | None) -> None:
        """Heartbeat, rules from central, upgrades (#15): with the gateway account only."""
        self.release = running_release(__file__)
        self.errors = ErrorCounter()
        self.fleet: FleetAgent | None = None
        self.rules_poller: RulesPoller | None = None
        self.trial: TrialCheck | None = None
        self._versions: dict[str, Any] | None = None
        self.releases = ReleaseStore(settings.releases)
        if credentials is None or settings.indexer is None:
            return
        logging.getLogger("imgcloud").addHandler(self.errors)
        client = FleetClient(
            settings.indexer.api_url, BearerAuth(credentials), verify=settings.ca_bundle
        )
        store = self.releases
        key = settings.release_public_key
        public = load_public_key(key) if key else None
        upgrader = Upgrader(store, client, public, self.release, self.restart)
        self.fleet = FleetAgent(
            client,
            versions=self.versions,
            queue=self.queue,
            rules=self.rules,
            storage_dir=settings.data_dir,
            certificates=settings.certificate_files,
            errors=self.errors,
            releases=store,
            upgrader=upgrader,
            every_s=settings.fleet_heartbeat_s,
        )
        self.rules_poller = RulesPoller(client, self.rules)
        self.fleet.rules_poller = self.rules_poller  # each answer says if rules changed
        checks = [self.local_answers, self.fleet.central_took_a_heartbeat]
        self.trial = TrialCheck(
            store,
            self.release,
            checks,
            self.restart,
            deadline_s=settings.upgrade_health_s,
            decided=self.fleet.notify,  # "healthy" reaches central now, not a beat later
        )

    def restart(self) -> None:
        """Ask to be started again, then shut Orthanc down cleanly (imgcloud.upgrade: the
        supervisor starts it, and the loader in edge_plugin.py chooses the release)."""
        self.releases.request_restart()
        self.local.client.post("/tools/shutdown", content=b"")

    def local_answers(self) -> str | None:
        """A trial release's health check: this Orthanc's REST API answers."""
        answer = self.local.client.get("/system")
        return None if answer.status_code == 200 else f"GET /system: HTTP {answer.status_code}"

    def versions(self) -> dict[str, Any]:
        """The heartbeat's versions: ours, Orthanc's, its plugins' (asked once)."""
        if self._versions is None:
            system = self.local.client.get("/system").json()
            plugins = {}
            for plugin in self.local.client.get("/plugins").json():
                answer = self.local.client.get(f"/plugins/{plugin}")
                if answer.status_code != 200 or not answer.headers.get(
                    "content-type", "application/json"
                ).startswith("application/json"):
                    continue  # "explorer.js" is listed too: Orthanc Explorer's extensions
                try:
                    plugins[str(plugin)] = str(answer.json().get("Version", ""))
                except ValueError:
                    continue
            plugins["imaging-cloud"] = __version__
            self._versions = {
                "software_version": self.release,
                "orthanc_version": str(system.get("Version", "")),
                "plugins": plugins,
            }
        return self._versions

    def encode(self, dicom: bytes, target: str) -> bytes:
        """JPEG-LS in the worker processes (CharLS), the other policies by Orthanc's DCMTK
        in this thread."""
        if target == JPEG_LS_LOSSLESS:
            return self.pool.jpeg_ls(dicom)
        return self.transcode(dicom, target)

    def compressed(self, dicom: bytes) -> bytes | None:
        """The instance compressed losslessly as the rules say, None to keep it as is."""
        return compress(dicom, self.rules.current.compression_policy, self.encode)

    def read_for_forwarding(self, instance_id: str) -> bytes:
        """The instance as it goes to central: compressed as the rules say. The arrival
        usually compressed it already (imgcloud.in_place: its bytes kept in memory until
        the local copy is replaced, once no C-STORE has come for a while); one still being
        compressed is waited for, one never compressed or not kept is compressed now.
        Every read to forward comes here, so nothing the rules say to compress leaves
        uncompressed, except an instance the codec refuses (kept and sent as received)."""
        return self.in_place.read(instance_id)

    def cstore_status(self, sop_instance_uid: str, held: Callable[[str], str | None]) -> int:
        """The DIMSE status for a modality's (or PACS's) C-STORE, before Orthanc stores it:
        0 to store it; for an instance the edge already holds, a warning, and the first
        copy stays (OverwriteInstances is on for the plugin's own compressed copy only:
        without this a resend would replace an archived instance, and central's copy after
        it). `held(uid)` is the held instance's Orthanc ID, or None."""
        self.in_place.cstore()  # the modality is sending: local replaces wait
        existing = held(sop_instance_uid) if sop_instance_uid else None
        if existing is None:
            return 0
        log.warning("a C-STORE of instance %s, held already, was discarded", existing)
        return DUPLICATE_STATUS

    def expect(self, tags: dict[str, Any], size: int, read: Callable[[], bytes]) -> None:
        """The C-STORE filter let an instance through (status 0): Orthanc is about to store
        it. Its instance and study IDs are computed from its tags, and its file (`read()`,
        `size` bytes, within imgcloud.orthanc_ids' budget) is kept for the encoder, so
        that its NEW_INSTANCE change needs no REST call (instance_arrived)."""
        ids = InstanceIds.from_tags(tags)
        if ids is not None:
            self.arrivals.expect(ids, size, read)

    def send_one(self, item: tuple[str, bytes | None]) -> int:
        instance_id, data = item
        if data is None:
            if self.in_place.defer_s <= 0:
                # replaced at once: the bytes hashed are the local copy as it is now
                # (compressed, or as received where the encoder gave up), never encoded again
                data = self.local.read_instance(instance_id)
            else:
                # deferred: the local copy may be the received one still; read as
                # forwarding reads (kept bytes, or encoded again)
                data = self.read_for_forwarding(instance_id)
        self.limiter.acquire(len(data))
        self.central.store(data)
        return len(data)

    def send(self, items: list[tuple[str, bytes | None]]) -> int:
        with ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="imgcloud-send") as pool:
            return sum(pool.map(self.send_one, items))  # the first failure propagates

    def record_and_deliver(self, study_id: str) -> tuple[int, int]:
        """Record the study's tags for the indexer (personal data sealed), then forward it."""
        record = build_record(
            self.institution, self.local.study_tags(study_id), self.local.study_series(study_id)
        )
        self.records.save(study_id, record)
        result = self.delivery.deliver(study_id)
        if self.sender is not None:
            self.sender.notify()
        return result

    def schedules(self) -> list[PullSchedule]:
        return [
            PullSchedule(
                pull.name,
                pull.every_minutes * 60,
                pull.model_dump(include={"source_aet", "modalities", "days_back"}),
            )
            for pull in self.rules.current.pacs_pulls
        ]

    def instance_arrived(self, instance_id: str, study_of: Callable[[str], str]) -> None:
        """Stream: the study is queued (durably) at its first instance and goes to central
        while the modality is still sending; each arrival marks it to go again, and is
        compressed in the background. Our own compressed copy coming back is not an
        arrival: what forwarding hashed is what was stored.

        The study and the received file come from the C-STORE filter (`expect`);
        `study_of(instance_id)` asks Orthanc only for an instance the filter did not see
        (a REST upload, a retrieval, one received before a restart)."""
        arrival = self.arrivals.take(instance_id)
        if not self.in_place.arrived(instance_id, arrival.received if arrival else None):
            return
        study_id = arrival.study if arrival is not None else study_of(instance_id)
        self.queue.forget_instance(instance_id)
        self.queue.enqueue(study_id)
        self.worker.notify()

    def study_stable(self, study_id: str) -> None:
        status = self.queue.status(study_id)
        if status is not None and status.state == "delivered":
            # delivered while stable, and no arrival since (one would have queued it): our
            # own replacements of its local copies made it unstable again, nothing new
            return
        self.queue.enqueue(study_id)
        self.worker.notify()

    def _background(self) -> list[Worker]:
        senders = (s for s in (self.sender, self.audit_sender) if s)
        fleet = (w for w in (self.fleet, self.rules_poller, self.trial) if w)
        return [self.worker, self.retriever, *senders, self.in_place.replacer, *fleet]

    def start(self) -> None:
        """Start the workers: they resume whatever a restart or crash left queued."""
        for worker in self._background():
            worker.start()

    def stop(self, join_s: float = 5.0) -> bool:
        """Tell every worker to stop, then wait for them all against one deadline: Orthanc's
        shutdown waits `join_s` at most, not that for each worker. False if any still runs."""
        stopped = stop_all(self._background(), join_s)
        logging.getLogger("imgcloud").removeHandler(self.errors)
        self.in_place.close()
        self.pool.close()
        return stopped

    def status(self) -> dict[str, Any]:
        current = self.rules.current
        return {
            "role": self.settings.plugin.role,
            "institution": self.institution,
            "version": __version__,
            "release": self.release,
            "storage": self.storage,
            "compression": current.compression,
            "rules_version": current.version,
            "forwarding_now": current.may_forward(dt.datetime.now()),
            "replaces_pending": self.in_place.pending(),
            **self.queue.counters(),
            **self.audit.counters(),
        }
