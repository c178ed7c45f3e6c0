"""The edge plugin's calls to its own Orthanc's REST API, answered in-process.

Python plugin 4.0 held the GIL during every orthanc.* call while Orthanc may call back into
our storage area from another thread, so worker threads went over loopback HTTP (with the
edge's own admin password). Python plugin 5.0 with `"Python": {"AllowThreads": true}`
releases the GIL during SDK calls: the requests built here go through an httpx transport
that the glue makes of `orthanc.RestApiGet/Post/Put/Delete` (glue_common.SdkTransport), so
no socket, no HTTP server thread and no credentials. That transport is the seam: unit tests
give an `httpx.MockTransport` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .errors import LocalOrthancError
from .http_call import Service
from .orthanc_rest import DICOM, OrthancRest

# The HTTP status Orthanc's REST API gives each error code (Orthanc's
# ConvertErrorCodeToHttpStatus): the SDK raises the code, callers expect the status.
HTTP_STATUS_OF_ERROR = {
    3: 400,  # ParameterOutOfRange
    5: 400,  # BadParameterType
    7: 404,  # InexistentItem
    8: 400,  # BadRequest
    12: 400,  # UriSyntax
    13: 404,  # InexistentFile
    15: 400,  # BadFileFormat
    17: 404,  # UnknownResource
    21: 404,  # InexistentTag
    28: 400,  # BadJson
    29: 401,  # Unauthorized
    34: 406,  # NotAcceptable
    36: 503,  # DatabaseUnavailable
    41: 416,  # BadRange
    42: 503,  # DatabaseCannotSerialize
    43: 409,  # Revision
    45: 403,  # ForbiddenAccess
    46: 409,  # DuplicateResource
}

# (method, path with its query, body) -> answer body; raises what the glue translates
RestCall = Callable[[str, str, bytes], bytes]


class InProcessTransport(httpx.BaseTransport):
    """httpx requests answered by a call into this Orthanc (no network).

    `call` is the glue's wrapper of the SDK; `error_code` tells an SDK failure from any other
    exception and returns its Orthanc error code (None: not an SDK failure, re-raised)."""

    def __init__(self, call: RestCall, error_code: Callable[[Exception], int | None]) -> None:
        self.call = call
        self.error_code = error_code

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode("ascii")
        try:
            body = self.call(request.method, path, request.read())
        except Exception as exc:
            code = self.error_code(exc)
            if code is None:
                raise
            status = HTTP_STATUS_OF_ERROR.get(code, 500)
            return httpx.Response(status, text=f"Orthanc error {code}: {exc}", request=request)
        return httpx.Response(200, content=body, request=request)


class LocalOrthanc(OrthancRest):
    """This edge's own Orthanc, in-process; failures raise LocalOrthancError."""

    def __init__(self, transport: httpx.BaseTransport, aet: str) -> None:
        self.aet = aet
        # No timeout applies in-process: a synchronous C-STORE or C-MOVE is bounded by
        # Orthanc's own DicomScuTimeout.
        self.client = httpx.Client(base_url="http://orthanc.local", transport=transport)
        self.service = Service(self.client, "local Orthanc", LocalOrthancError, timeout=None)

    def replace(self, dicom: bytes) -> None:
        """Store the edge's compressed copy over the received one (OverwriteInstances,
        which imgcloud.edge_app allows to the plugin only); LocalOrthancError unless
        Orthanc stored it."""
        answer = self._json(
            "POST", "/instances", "replace an instance", content=dicom, headers=DICOM
        )
        status = answer.get("Status") if isinstance(answer, dict) else None
        if status != "Success":
            raise LocalOrthancError(f"the compressed copy was not stored (Orthanc: {status})")

    def has_instance(self, instance_id: str) -> bool:
        """Whether this edge still holds an instance (a replace must not store again one
        that was deleted meanwhile)."""
        answer = self._call(
            "GET", f"/instances/{instance_id}", "find an instance", expect=(200, 404)
        )
        return answer.status_code == 200

    def find_resource(self, uid: str) -> str | None:
        """The Orthanc ID of a series or instance by its UID."""
        if not uid:
            return None
        return self._lookup(uid, ("Series", "Instance"))

    def list_instances(self, study_id: str) -> list[tuple[str, str]]:
        try:
            return super().list_instances(study_id)
        except LocalOrthancError as exc:
            if exc.status == 404:
                raise LocalOrthancError(f"study {study_id} is no longer on this edge", 404) from exc
            raise

    def sop_uids(self, study_instance_uid: str) -> set[str]:
        study_id = self.find_study(study_instance_uid)
        return {sop for _, sop in self.list_instances(study_id)} if study_id else set()

    def study_tags(self, study_id: str) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}", "read a study")

    def is_stable(self, study_id: str) -> bool:
        return bool(self.study_tags(study_id).get("IsStable", False))

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/studies/{study_id}/series", "read series")

    def modalities(self) -> set[str]:
        return set(self._json("GET", "/modalities", "list modalities"))

    def c_store(self, modality: str, study_id: str) -> None:
        """Send a study to a configured DICOM modality (the hospital PACS), synchronously."""
        self._call(
            "POST",
            f"/modalities/{modality}/store",
            f"C-STORE to {modality}",
            json={"Resources": [study_id], "Synchronous": True},
        )

    def query(self, modality: str, query: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
        """C-FIND at study level; returns the query ID and each answer's tags by keyword."""
        created = self._json(
            "POST",
            f"/modalities/{modality}/query",
            f"C-FIND at {modality}",
            json={"Level": "Study", "Query": query},
        )
        query_id = created["ID"]
        answers = []
        count = len(self._json("GET", f"/queries/{query_id}/answers", "read answers"))
        for index in range(count):
            answers.append(
                self._json(
                    "GET",
                    f"/queries/{query_id}/answers/{index}/content?simplify",
                    "read an answer",
                )
            )
        return query_id, answers

    def retrieve(self, query_id: str, index: int) -> None:
        """C-MOVE one C-FIND answer to this edge, synchronously."""
        self._call(
            "POST",
            f"/queries/{query_id}/answers/{index}/retrieve",
            "C-MOVE",
            json={"TargetAet": self.aet, "Synchronous": True},
        )
