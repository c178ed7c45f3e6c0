"""Where a study can be read: DICOMweb (QIDO, WADO-RS, metadata) and the viewer, all
through the HTTPS gateway."""

from __future__ import annotations

from urllib.parse import quote

from ..schemas import Links


def study_links(gateway_url: str, study_instance_uid: str | None) -> Links | None:
    if not study_instance_uid:
        return None
    base = gateway_url.rstrip("/")
    uid = quote(study_instance_uid, safe=".")
    return Links(
        study=f"{base}/dicom-web/studies/{uid}",
        series=f"{base}/dicom-web/studies/{uid}/series",
        metadata=f"{base}/dicom-web/studies/{uid}/metadata",
        qido=f"{base}/dicom-web/studies?StudyInstanceUID={uid}",
        viewer=f"{base}/viewer?StudyInstanceUIDs={uid}",
    )
