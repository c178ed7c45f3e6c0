"""The calls that central and this edge's own Orthanc answer alike: Orthanc's REST API for
storing, finding and reading instances. `CentralApi` and `LocalOrthanc` are both one."""

from __future__ import annotations

from typing import Any

import httpx

from .http_call import Service

DICOM = {"Content-Type": "application/dicom"}


class OrthancRest:
    """Subclasses set `service` (which Orthanc, with which exception and timeout)."""

    service: Service

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        return self.service.call(method, path, what, **kwargs)

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        return self.service.json(method, path, what, **kwargs)

    def _lookup(self, uid: str, types: tuple[str, ...]) -> str | None:
        found = self._json("POST", "/tools/lookup", "look up a UID", content=uid)
        return next((r["ID"] for r in found if r.get("Type") in types), None)

    def find_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc ID of a study by its Study Instance UID."""
        return self._lookup(study_instance_uid, ("Study",))

    def list_instances(self, study_id: str) -> list[tuple[str, str]]:
        """(Orthanc instance ID, SOP Instance UID) of each instance of a study."""
        found = self._json("GET", f"/studies/{study_id}/instances", "list a study's instances")
        return [(i["ID"], i["MainDicomTags"]["SOPInstanceUID"]) for i in found]

    def read_instance(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file", "read an instance").content

    def store(self, dicom: bytes) -> None:
        self._call("POST", "/instances", "store an instance", content=dicom, headers=DICOM)
