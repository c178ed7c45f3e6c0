"""The central archive's plugin logic: the SHA-256 of every instance as it arrived, the
verification edges ask for (discarding copies that do not match), and the push registry's
REST API. Plain Python: central_plugin.py passes the few Orthanc calls it needs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from . import __version__
from .delivery import discard_copy, verify_against
from .errors import PluginError
from .instance_hashes import HashRegistry
from .plugin_settings import CentralSettings
from .pushes import PushCreate, PushRegistry, PushRejected, PushReport
from .routes import Method, Reply, Request, Route, error
from .storage.archive import EncryptedArchive, KeyRingSource
from .storage.read_ahead import AttachmentIndex, OrderOf, ReadAhead
from .verification import VerifyRequest


class CentralOrthanc(Protocol):
    """What central's logic asks of its Orthanc (the glue translates SDK calls)."""

    def instance_id(self, sop_instance_uid: str) -> str | None: ...
    def holds_study(self, study_instance_uid: str) -> bool: ...
    def get_json(self, path: str) -> Any: ...
    def delete(self, path: str) -> None: ...
    def log_warning(self, message: str) -> None: ...


class CentralApp:
    def __init__(
        self,
        settings: CentralSettings,
        storage: str,
        orthanc: CentralOrthanc,
        key_ring: KeyRingSource | None = None,
        archive: EncryptedArchive | None = None,
        instance_order: OrderOf | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.orthanc = orthanc
        self.key_ring = key_ring  # the storage area's, as this Orthanc has loaded it
        self.archive = archive
        self.hashes = HashRegistry(settings.conninfo)
        self.read_ahead: ReadAhead | None = None
        try:
            self.pushes = PushRegistry(settings.conninfo)
            if archive is not None and instance_order and settings.read_ahead.enabled:
                # wraps the archive's store: reads of a series' DICOM files fetch ahead
                files = AttachmentIndex(settings.conninfo)
                self.read_ahead = ReadAhead(archive, settings.read_ahead, instance_order, files)
        except BaseException:
            self.hashes.close()
            if hasattr(self, "pushes"):
                self.pushes.close()
            raise

    def close(self) -> None:
        """Close the read-ahead, the archive's store and the registries' pools (when
        central's plugin stops); one failing does not keep the others open."""
        try:
            if self.read_ahead is not None:
                self.read_ahead.close()  # and the store it wraps
            elif self.archive is not None:
                self.archive.close()
        finally:
            try:
                self.pushes.close()
            finally:
                self.hashes.close()

    def http_request(self, method: object, uri: str) -> None:
        """Every HTTP request, before Orthanc answers it: a WADO-RS retrieval of a study or
        series tells the read-ahead which DICOM files come next (never raises)."""
        if self.read_ahead is not None:
            self.read_ahead.retrieval(method, uri)

    def stored(self, instance_id: str, data: bytes) -> None:
        """Record the SHA-256 of exactly what arrived (before encryption), for verification."""
        self.hashes.record(instance_id, hashlib.sha256(data).hexdigest())

    def _stored_hash(self, sop_uid: str) -> str | None:
        orthanc_id = self.orthanc.instance_id(sop_uid)
        return self.hashes.lookup(orthanc_id) if orthanc_id else None

    def _discard(self, sop_uid: str) -> None:
        """Remove a copy that does not match its sender's hash, so the resend replaces it."""
        orthanc_id = self.orthanc.instance_id(sop_uid)
        if orthanc_id:
            discard_copy(
                orthanc_id, self.hashes.forget, lambda i: self.orthanc.delete(f"/instances/{i}")
            )
            self.orthanc.log_warning(
                f"imaging-cloud: discarded instance {orthanc_id}: hash mismatch"
            )

    def _study_uids(self, sop_uids: set[str]) -> dict[str, str]:
        """The StudyInstanceUID of each SOP instance held here (one lookup per series)."""
        of_series: dict[str, str] = {}
        out: dict[str, str] = {}
        for sop_uid in sop_uids:
            orthanc_id = self.orthanc.instance_id(sop_uid)
            if not orthanc_id:
                continue
            series = self.orthanc.get_json(f"/instances/{orthanc_id}")["ParentSeries"]
            if series not in of_series:
                study = self.orthanc.get_json(f"/series/{series}/study")
                of_series[series] = study["MainDicomTags"].get("StudyInstanceUID", "")
            out[sop_uid] = of_series[series]
        return out

    def routes(self) -> dict[str, Route]:
        """URI pattern -> route, as Orthanc registers them."""
        push = "/imaging-cloud/pushes/([0-9a-f-]+)"
        return {
            "/imaging-cloud/pushes": Route(
                GET=self.list_pushes, POST=Method(self.create_push, PushCreate, invalid_status=422)
            ),
            push: Route(GET=self.get_push),
            f"{push}/state": Route(POST=Method(self.push_state, PushReport, invalid_status=422)),
            "/imaging-cloud/status": Route(GET=self.status),
            "/imaging-cloud/verify": Route(
                POST=Method(self.verify, VerifyRequest, hint=VerifyRequest.SHAPE)
            ),
        }

    def status(self, request: Request) -> Reply:
        """Role, version, storage, and the key ring's version and key ids (no material): a
        rotation across nodes waits for each node to show the new key here."""
        role = self.settings.plugin.role
        body: dict[str, Any] = {"role": role, "version": __version__, "storage": self.storage}
        if self.key_ring is not None:
            body["key_ring"] = self.key_ring.summary()
        body["read_ahead"] = self.read_ahead.stats() if self.read_ahead else {"enabled": False}
        return Reply(200, body)

    def verify(self, request: Request) -> Reply:
        """POST {"instances": {SOP Instance UID: SHA-256}[, "discard": false]} -> confirmed /
        missing / mismatched, and the study of every instance held here. A mismatching copy
        is discarded (so the resend replaces it) unless "discard" is false: the gateway's
        check asks that way first, and lets discards through only for the caller's own
        studies."""
        body: VerifyRequest = request.body
        keep: Callable[[str], None] = lambda _sop: None  # noqa: E731
        result = verify_against(
            self._stored_hash, body.instances, self._discard if body.discard else keep
        )
        return Reply(
            200,
            {
                "confirmed": sorted(result.confirmed),
                "missing": sorted(result.missing),
                "mismatched": sorted(result.mismatched),
                "studies": self._study_uids(result.confirmed | result.mismatched),
            },
        )

    @staticmethod
    def _registry(call: Callable[[], Reply]) -> Reply:
        """A push registry call; its refusals and outages become answers."""
        try:
            return call()
        except PushRejected as exc:
            return error(exc.status, str(exc))
        except PluginError as exc:
            return error(503, str(exc))

    def create_push(self, request: Request) -> Reply:
        """POST: record a push of a study held here."""
        asked: PushCreate = request.body

        def create() -> Reply:
            if not self.orthanc.holds_study(asked.study_instance_uid):
                raise PushRejected("the study is not in the central archive", 404)
            push, created = self.pushes.create(asked.model_dump())
            if created:
                self.orthanc.log_warning(
                    f"imaging-cloud: push {push['push_id']} recorded "
                    f"{push['from_institution']} -> {push['to_institution']}"
                )
            return Reply(200, push)

        return self._registry(create)

    def list_pushes(self, request: Request) -> Reply:
        """GET ?to=CODE[&state=S]: the pushes to one institution."""
        to = request.query.get("to")
        if not to:
            return error(422, "query parameter 'to' (institution code) is required")
        state = request.query.get("state")
        return self._registry(lambda: Reply(200, {"pushes": self.pushes.list(to, state)}))

    def get_push(self, request: Request) -> Reply:
        found = self._registry(lambda: Reply(200, self.pushes.get(request.groups[0])))
        return error(404, "no such push") if found.status == 200 and found.body is None else found

    def push_state(self, request: Request) -> Reply:
        """POST a state report from the receiving hospital's edge."""
        return self._registry(
            lambda: Reply(200, self.pushes.change(request.groups[0], request.body))
        )
