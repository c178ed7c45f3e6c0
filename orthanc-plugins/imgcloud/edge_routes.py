"""The edge's REST API for the hospital (/imaging-cloud/...), as plain route handlers over
an EdgeApp, and the one kind of change to Orthanc's own API the edge refuses."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from .edge_app import EdgeApp
from .edge_requests import FetchRequest, PacsPullRequest, PushRequest, RequestRejected
from .edge_rules import RulesRejected
from .errors import CentralError, ServiceCallError
from .routes import Method, Reply, Request, Route, error
from .storage.archive import KeyRingSource

# Orthanc's REST API may add, change or remove DICOM modalities at run time (PUT and
# DELETE /modalities/{id}); the edge's load-time checks of DicomModalities (per-AE
# permissions, the TLS-only AE titles' Host) would not see those. POSTs below an entry
# (echo, store, query, move) only use it and stay allowed.
MODALITY_CHANGE_REFUSED = (
    "DICOM modalities are fixed by this edge's configuration (DicomModalities, checked at "
    "load); the REST API may not add, change or remove them"
)


_HTTP_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}  # OrthancPluginHttpMethod


def method_name(method: object) -> str:
    """An HTTP filter's method (Orthanc passes the SDK's number) as its name."""
    if isinstance(method, str):
        return method.upper()
    try:
        return _HTTP_METHODS.get(int(method), str(method))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(method)


def modality_change(method: str, uri: str) -> bool:
    """True for a request that would change DICOM modalities through Orthanc's REST API
    (any spelling of the path Orthanc would route there: doubled slashes, %-escapes)."""
    parts = [part for part in unquote(uri).split("/") if part]
    if not parts or parts[0] != "modalities":
        return False
    return method in ("PUT", "DELETE") or (method == "POST" and len(parts) <= 2)


SCRIPT_REFUSED = (
    "Lua scripts may not run on this edge: their REST calls would bypass this filter "
    "(ExecuteLuaEnabled is false, checked at load)"
)


def script_execution(uri: str) -> bool:
    """True for Orthanc's /tools/execute-script however spelt (any method: Orthanc answers
    only POST, the others need no answer)."""
    return [part for part in unquote(uri).split("/") if part] == ["tools", "execute-script"]


def refusal(method: str, uri: str) -> str | None:
    """Why the edge's HTTP filter refuses a request to Orthanc's REST API, or None."""
    if modality_change(method, uri):
        return MODALITY_CHANGE_REFUSED
    if script_execution(uri):
        return SCRIPT_REFUSED
    return None


def _json_body(handler: Callable[[Request], Reply], model: type) -> Method:
    # the edge has always answered 422 to a body it refuses, whatever the fault
    return Method(handler, model, invalid_status=422, json_status=422)


class EdgeRoutes:
    """The handlers; `log_warning` writes to Orthanc's log; `key_ring` is the storage
    area's, whose version and key ids (never material) the status route shows."""

    def __init__(
        self,
        app: EdgeApp,
        log_warning: Callable[[str], None],
        key_ring: KeyRingSource | None = None,
    ) -> None:
        self.app = app
        self.log_warning = log_warning
        self.key_ring = key_ring

    def routes(self) -> dict[str, Route]:
        """URI pattern -> route, as Orthanc registers them."""
        study = "/imaging-cloud/studies/([0-9a-f-]+)"
        return {
            "/imaging-cloud/rules": Route(GET=self.rules, PUT=self.replace_rules),
            "/imaging-cloud/status": Route(GET=self.status),
            f"{study}/forwarding": Route(GET=self.study_forwarding),
            f"{study}/record": Route(GET=self.study_record),
            "/imaging-cloud/retrievals": Route(POST=_json_body(self.fetch, FetchRequest)),
            "/imaging-cloud/pacs-pulls": Route(POST=_json_body(self.pacs_pull, PacsPullRequest)),
            "/imaging-cloud/jobs/([0-9a-f-]+)": Route(GET=self.job),
            "/imaging-cloud/pushes": Route(POST=_json_body(self.push, PushRequest)),
            "/imaging-cloud/pushes/([0-9a-f-]+)": Route(GET=self.push_state),
        }

    def status(self, request: Request) -> Reply:
        body = self.app.status()
        if self.key_ring is not None:
            body["key_ring"] = self.key_ring.summary()
        return Reply(200, body)

    def _new_job(self, kind: str, request: Request) -> Reply:
        parsed = request.body
        named = {getattr(parsed, "deliver_to", None), getattr(parsed, "source_aet", None)}
        unknown = sorted(aet for aet in named - self.app.known_modalities if aet)
        if unknown:
            return error(422, f"AE titles not configured on this edge: {', '.join(unknown)}")
        job = self.app.jobs.add(kind, parsed.model_dump(exclude_none=True))
        self.app.retriever.notify()
        return Reply(200, job.as_dict())

    def fetch(self, request: Request) -> Reply:
        """POST {study_instance_uid, deliver_to?}: fetch a study back from the cloud (回溯)."""
        return self._new_job("fetch", request)

    def pacs_pull(self, request: Request) -> Reply:
        """POST {source_aet, criteria...}: C-FIND at the PACS, C-MOVE the studies here."""
        return self._new_job("pacs-pull", request)

    def job(self, request: Request) -> Reply:
        job = self.app.jobs.get(request.groups[0])
        return error(404, "no such job") if job is None else Reply(200, job.as_dict())

    def push(self, request: Request) -> Reply:
        """POST {study_instance_uid, to_institution, deliver_to?}: push a study to another
        hospital (跨院推送); central records it and the receiving edge collects it."""
        push: PushRequest = request.body
        app = self.app
        try:
            if push.to_institution == app.institution:
                raise RequestRejected("to_institution: must differ from this hospital's code")
            if app.sender is not None:
                # the indexer must know the study is ours first (records waiting go out
                # now): central's lookup through the gateway finds only studies this
                # hospital may read
                app.sender.run_once()
            if app.central.find_study(push.study_instance_uid) is None:
                raise RequestRejected("the study is not in the central archive", 404)
            if app.sender is not None:
                # the receiving hospital may then read the study through the gateway too
                app.sender.indexer.grant(
                    app.institution, push.study_instance_uid, push.to_institution, "push"
                )
            answer = app.central.create_push(
                push.model_dump(exclude_none=True) | {"from_institution": app.institution}
            )
        except RequestRejected as exc:
            return error(exc.status, str(exc))
        except ServiceCallError as exc:
            return error(exc.status if exc.status in (404, 409, 422) else 502, str(exc))
        return Reply(200, answer)

    def push_state(self, request: Request) -> Reply:
        """GET a push's state as central records it (either hospital may ask)."""
        try:
            return Reply(200, self.app.central.get_push(request.groups[0]))
        except CentralError as exc:
            return error(404 if exc.status == 404 else 502, str(exc))

    def study_forwarding(self, request: Request) -> Reply:
        status = self.app.queue.status(request.groups[0])
        if status is None:
            return Reply(404, "this study has not been queued for forwarding")
        return Reply(200, status.as_dict())

    def study_record(self, request: Request) -> Reply:
        """GET the tags recorded for a study (patient data opened for the hospital's API)."""
        record = self.app.records.get(request.groups[0])
        return error(404, "no record for this study yet") if record is None else Reply(200, record)

    def rules(self, request: Request) -> Reply:
        """GET the rules in force."""
        return Reply(200, self.app.rules.current.model_dump_json())

    def replace_rules(self, request: Request) -> Reply:
        """PUT a new rules document (validated, newer version, persisted)."""
        store = self.app.rules
        try:
            rules = store.replace(request.body)
        except RulesRejected as exc:
            return Reply(
                400, f"rules refused, version {store.current.version} stays in force: {exc}"
            )
        self.app.worker.notify()
        self.log_warning(f"imaging-cloud: edge rules version {rules.version} in force")
        return Reply(200, rules.model_dump_json())
