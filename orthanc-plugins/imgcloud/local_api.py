"""The edge plugin's calls to its own Orthanc, over loopback REST.

Python plugin 4.0 holds the GIL during every orthanc.* call while Orthanc may call back
into our storage area holding its own locks, so the plugin's worker threads never use the
SDK: they use this client, which blocks in socket I/O without the GIL.
"""

from __future__ import annotations

from typing import Any

import httpx

from .errors import LocalOrthancError


class LocalOrthanc:
    def __init__(self, url: str, auth: tuple[str, str] | None, aet: str) -> None:
        self.aet = aet
        self.client = httpx.Client(
            base_url=url,
            auth=auth,
            timeout=httpx.Timeout(600, connect=5),
            limits=httpx.Limits(max_connections=16, keepalive_expiry=0.5),
        )

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LocalOrthancError(
                f"local Orthanc did not answer ({what}): {type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise LocalOrthancError(
                f"local Orthanc refused ({what}): HTTP {response.status_code} "
                f"{response.text[:200].strip()}",
                response.status_code,
            )
        return response

    def find_study(self, study_instance_uid: str) -> str | None:
        found = self._call("POST", "/tools/lookup", "look up", content=study_instance_uid).json()
        return next((r["ID"] for r in found if r.get("Type") == "Study"), None)

    def find_resource(self, uid: str) -> str | None:
        """The Orthanc ID of a series or instance by its UID."""
        if not uid:
            return None
        found = self._call("POST", "/tools/lookup", "look up", content=uid).json()
        return next((r["ID"] for r in found if r.get("Type") in ("Series", "Instance")), None)

    def list_instances(self, study_id: str) -> list[tuple[str, str]]:
        try:
            found = self._call("GET", f"/studies/{study_id}/instances", "list instances").json()
        except LocalOrthancError as exc:
            if exc.status == 404:
                raise LocalOrthancError(f"study {study_id} is no longer on this edge", 404) from exc
            raise
        return [(i["ID"], i["MainDicomTags"]["SOPInstanceUID"]) for i in found]

    def sop_uids(self, study_instance_uid: str) -> set[str]:
        study_id = self.find_study(study_instance_uid)
        return {sop for _, sop in self.list_instances(study_id)} if study_id else set()

    def read_instance(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file", "read an instance").content

    def study_tags(self, study_id: str) -> dict[str, Any]:
        return self._call("GET", f"/studies/{study_id}", "read a study").json()

    def is_stable(self, study_id: str) -> bool:
        return bool(self.study_tags(study_id).get("IsStable", False))

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/studies/{study_id}/series", "read series").json()

    def store(self, dicom: bytes) -> None:
        self._call(
            "POST",
            "/instances",
            "store an instance",
            content=dicom,
            headers={"Content-Type": "application/dicom"},
        )

    def modalities(self) -> set[str]:
        return set(self._call("GET", "/modalities", "list modalities").json())

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
        created = self._call(
            "POST",
            f"/modalities/{modality}/query",
            f"C-FIND at {modality}",
            json={"Level": "Study", "Query": query},
        ).json()
        query_id = created["ID"]
        answers = []
        count = len(self._call("GET", f"/queries/{query_id}/answers", "read answers").json())
        for index in range(count):
            answers.append(
                self._call(
                    "GET",
                    f"/queries/{query_id}/answers/{index}/content?simplify",
                    "read an answer",
                ).json()
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
