"""The edge's DICOM query/retrieve SCP (#18, 4), audited, and its gate.

Orthanc passes every C-FIND and C-MOVE of a known AE (a `DicomModalities` entry, each with
AllowFind/AllowMove true, checked at load by imgcloud.config) to this plugin, which decides
per calling AE (`ImagingCloud.QueryRetrieveAETs`: the hospital PACS by default) before any
database access. A refused operation answers the SCU a failure with no dataset. C-GET is
answered by Orthanc's core with no plugin hook: AllowGet is false for every AE. What the
gate lets through:

- C-FIND: answered from this edge's own index through its REST API (`/tools/find`, the
  same matching as Orthanc's core C-FIND: wildcards, ranges, lists, PN case-insensitive),
  with the keys asked for, from the resource and its parents, and the counters Orthanc
  computes (NumberOf...Related..., ModalitiesInStudy).
- C-MOVE: a study held here is sent as Orthanc would; a study only the cloud holds is
  fetched back from central first (回溯), then sent.

Each operation, refused or not, becomes an audit event (calling AE, level, query, answers,
outcome). The source address is the host `DicomModalities` names for the calling AE, which
Orthanc checked (`DicomCheckModalityHost`): the Python plugin passes no peer address to
these callbacks. For an AE title allowed only over TLS (`ImagingCloud.DicomListeners`) that
host is the TLS sidecar's own address, so its events' source says the association came
over mutual TLS (the sidecar's access log has the peer's address and certificate).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from pydicom.datadict import dictionary_VR, keyword_for_tag

from .dicom_audit import Action, AuditOutbox, Outcome, build_event

log = logging.getLogger(__name__)

FIND_LEVELS = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "IMAGE": "Instance"}
NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet"}
COUNTERS = {
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
}


class DicomRefused(ValueError):
    """An operation this SCP will not perform (Orthanc answers the SCU with a failure)."""


def modality_entries(configuration: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """AE title -> (DicomModalities entry name, host), short or long form."""
    entries: dict[str, tuple[str, str]] = {}
    for name, entry in (configuration.get("DicomModalities") or {}).items():
        if isinstance(entry, dict):
            aet, host = entry.get("AET", name), entry.get("Host", "")
        else:
            aet, host = entry[0], entry[1]
        entries.setdefault(str(aet), (name, str(host)))
    return entries


def asked_keys(tags: Iterable[tuple[int, int, str]]) -> tuple[str, dict[str, str]]:
    """(group, element, value) of a C-FIND identifier -> (level, {keyword: value}).

    Keys without a public keyword and sequences are left out: Orthanc's index holds
    neither, and its core C-FIND answers them empty."""
    level = ""
    query: dict[str, str] = {}
    for group, element, value in tags:
        tag = (int(group) << 16) | int(element)
        keyword = keyword_for_tag(tag)
        if keyword == "QueryRetrieveLevel":
            level = str(value).strip().upper()
        elif keyword and dictionary_VR(tag) != "SQ":
            query[keyword] = str(value)
    return level, query


def _address(host: str) -> str:
    """The host as an IP address, or "" when DicomModalities names it otherwise."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def _universal(value: str) -> bool:
    return value.strip().strip("*") == ""


class LocalIndex:
    """This edge's Orthanc index, read through local_api's client (in-process SDK calls)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def find(self, level: str, query: dict[str, str], limit: int) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"Level": level, "Query": query, "Expand": True}
        if limit:
            body["Limit"] = limit
        return list(self._json("POST", "/tools/find", json=body))

    def get(self, path: str) -> Any:
        return self._json("GET", path)


class FindAnswerer:
    """Builds C-FIND answers as Orthanc's core does, one request at a time."""

    def __init__(self, index: LocalIndex, retrieve_aet: str, limit: int = 0) -> None:
        self.index = index
        self.retrieve_aet = retrieve_aet
        self.limit = limit  # Orthanc's LimitFindResults: 0 is no limit

    def answers(self, level: str, query: dict[str, str]) -> tuple[list[dict[str, str]], bool]:
        """The answers and whether there were more than the limit."""
        orthanc_level = FIND_LEVELS.get(level)
        if orthanc_level is None:
            raise DicomRefused(f"C-FIND at level {level!r} is not supported")
        constraints = {
            k: v for k, v in query.items() if k not in NOT_MATCHED | COUNTERS and not _universal(v)
        }
        found = self.index.find(orthanc_level, constraints, self.limit + 1 if self.limit else 0)
        incomplete = bool(self.limit) and len(found) > self.limit
        cache: dict[str, Any] = {}
        results = []
        for resource in found[: self.limit or None]:
            tags = self._tags(resource, cache)
            answer = {"QueryRetrieveLevel": level}
            for keyword in query:
                if keyword not in NOT_MATCHED:
                    answer[keyword] = tags.get(keyword, "")
            answer.setdefault("RetrieveAETitle", self.retrieve_aet)  # as Orthanc's core does
            results.append(answer)
        return results, incomplete

    def _cached(self, path: str, cache: dict[str, Any]) -> Any:
        if path not in cache:
            cache[path] = self.index.get(path)
        return cache[path]

    def _tags(self, resource: dict[str, Any], cache: dict[str, Any]) -> dict[str, str]:
        """The resource's main tags, its parents', and the counters."""
        kind = resource["Type"]
        tags: dict[str, str] = {"RetrieveAETitle": self.retrieve_aet}
        chain = [resource]
        if kind == "Instance":
            chain.append(self._cached(f"/series/{resource['ParentSeries']}", cache))
        if kind in ("Instance", "Series"):
            chain.append(self._cached(f"/studies/{chain[-1]['ParentStudy']}", cache))
        for item in reversed(chain):
            tags.update(item.get("PatientMainDicomTags", {}))
            tags.update(item.get("MainDicomTags", {}))
        rid = resource["ID"]
        if kind == "Patient":
            stats = self._cached(f"/patients/{rid}/statistics", cache)
            tags["NumberOfPatientRelatedStudies"] = str(len(resource.get("Studies", [])))
            tags["NumberOfPatientRelatedSeries"] = str(stats.get("CountSeries", ""))
            tags["NumberOfPatientRelatedInstances"] = str(stats.get("CountInstances", ""))
        elif kind == "Study":
            series = self._cached(f"/studies/{rid}/series", cache)
            tags["NumberOfStudyRelatedSeries"] = str(len(series))
            tags["NumberOfStudyRelatedInstances"] = str(
                sum(len(s.get("Instances", [])) for s in series)
            )
            modalities = {s.get("MainDicomTags", {}).get("Modality", "") for s in series}
            tags["ModalitiesInStudy"] = "\\".join(sorted(modalities - {""}))
        elif kind == "Series":
            tags["NumberOfSeriesRelatedInstances"] = str(len(resource.get("Instances", [])))
        return tags


MOVE_UIDS = {"SERIES": "SeriesInstanceUID", "INSTANCE": "SOPInstanceUID", "IMAGE": "SOPInstanceUID"}
MOVE_KEYS = (
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


class DicomScp:
    """C-FIND and C-MOVE at the edge, each audited whatever its outcome."""

    def __init__(
        self,
        configuration: dict[str, Any],
        local: Any,  # imgcloud.local_api.LocalOrthanc
        fetch_back: Callable[[dict[str, str]], dict[str, Any]],
        outbox: AuditOutbox,
        notify: Callable[[], None] = lambda: None,
        query_retrieve_aets: Iterable[str] = (),
    ) -> None:
        self.modalities = modality_entries(configuration)
        self.query_retrieve_aets = frozenset(query_retrieve_aets)
        self.local = local
        self.fetch_back = fetch_back
        self.outbox = outbox
        self.notify = notify
        self.finder = FindAnswerer(
            LocalIndex(local.client),
            str(configuration.get("DicomAet", "ORTHANC")),
            int(configuration.get("LimitFindResults", 0) or 0),
        )

    def gate(self, operation: str, calling_ae: str) -> None:
        """Raise DicomRefused unless the calling AE may query and retrieve here."""
        if calling_ae.strip() not in self.query_retrieve_aets:
            raise DicomRefused(f"{operation} is not allowed to this AE title")

    def audit(
        self,
        action: Action,
        calling_ae: str,
        called_ae: str,
        level: str,
        query: dict[str, str],
        answers: int,
        outcome: Outcome,
    ) -> None:
        source = _address(self.modalities.get(calling_ae.strip(), ("", ""))[1])
        event = build_event(
            action,
            calling_ae=calling_ae,
            called_ae=called_ae,
            source=source,
            level=level,
            query=query,
            answers=answers,
            outcome=outcome,
        )
        try:
            self.outbox.add(event)
        except Exception:
            log.exception("audit event %s could not be kept", event["event_id"])
            raise
        self.notify()

    def find(
        self,
        calling_ae: str,
        called_ae: str,
        tags: Iterable[tuple[int, int, str]],
        add_answer: Callable[[dict[str, str]], None],
        mark_incomplete: Callable[[], None],
    ) -> int:
        """Answer a C-FIND through `add_answer`; audited; raises to fail the C-FIND."""
        level, query = asked_keys(tags)
        sent = 0
        outcome: Outcome = "failed"
        try:
            self.gate("C-FIND", calling_ae)  # before any database access
            answers, incomplete = self.finder.answers(level, query)
            for answer in answers:
                add_answer(answer | {"SpecificCharacterSet": "ISO_IR 192"})
                sent += 1
            if incomplete:
                mark_incomplete()
            outcome = "ok"
        except DicomRefused:
            outcome = "refused"
            raise
        finally:
            self.audit("dicom.c-find", calling_ae, called_ae, level, query, sent, outcome)
        return sent

    def move(self, request: dict[str, Any]) -> int:
        """Serve a C-MOVE (see the module's docstring); audited; raises to fail it."""
        calling_ae = str(request.get("OriginatorAET", ""))
        target_aet = str(request.get("TargetAET", "")).strip()
        level = str(request.get("Level", "")).upper()
        query = {k: str(request.get(k) or "") for k in MOVE_KEYS if request.get(k)}
        query["MoveDestination"] = target_aet
        sent = 0
        outcome: Outcome = "failed"
        try:
            self.gate("C-MOVE", calling_ae)  # before any database access
            sent = self._move(level, target_aet, request)
            outcome = "ok"
        except DicomRefused:
            outcome = "refused"
            raise
        finally:
            called_ae = str(request.get("SourceAET", ""))  # Orthanc names the called AE so
            self.audit("dicom.c-move", calling_ae, called_ae, level, query, sent, outcome)
        return sent

    def _move(self, level: str, target_aet: str, request: dict[str, Any]) -> int:
        target = self.modalities.get(target_aet)
        if target is None:
            raise DicomRefused("C-MOVE destination is not a configured modality")
        study_uid = str(request.get("StudyInstanceUID") or "").strip()
        if level not in ("STUDY", "SERIES", "INSTANCE", "IMAGE") or not study_uid:
            raise DicomRefused("C-MOVE needs a Study Instance UID (study, series or image level)")
        if self.local.find_study(study_uid) is None:
            fetched = self.fetch_back({"study_instance_uid": study_uid})
            log.warning("C-MOVE fetched %s instances back from central", fetched["fetched"])
        if level == "STUDY":
            resource = self.local.find_study(study_uid)
            kind = "studies"
        else:
            resource = self.local.find_resource(str(request.get(MOVE_UIDS[level]) or "").strip())
            kind = "series" if level == "SERIES" else "instances"
        if resource is None:
            raise DicomRefused("the requested resource is neither here nor in the cloud")
        count = 1
        if kind != "instances":
            count = len(self.finder.index.get(f"/{kind}/{resource}/instances"))
        self.local.c_store(target[0], resource)
        return count
