"""Which study a DICOMweb request is confined to, as the gateway's check sees it: only a
path naming one study counts, and anything a proxy or Orthanc could read differently
(dot segments, encoded separators, a second study in the query) confines it to none."""

from __future__ import annotations

import pytest

from indexer.api.routes.authz import study_of

UID = "1.2.826.0.1.3680043.8.498.71986104404705979535517013728157915242"  # 38-digit part


@pytest.mark.parametrize(
    "path",
    [
        f"/dicom-web/studies/{UID}",
        f"/dicom-web/studies/{UID}/metadata",
        f"/dicom-web/studies/{UID}/series?includefield=0008103E",
        f"/dicom-web/studies/{UID}/series/1.2/instances/1.2.3/frames/1",
    ],
)
def test_a_path_naming_one_study_is_confined_to_it(path: str) -> None:
    assert study_of(path) == UID


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies",
        "/dicom-web/studies/",
        f"/dicom-web/studies?StudyInstanceUID={UID}",
        f"/dicom-web/studies/?StudyInstanceUID={UID}&StudyInstanceUID=",
        f"/dicom-web/series?StudyInstanceUID={UID}",
        f"/dicom-web/instances?0020000D={UID}",
        f"/dicom-web/studies/{UID}/%2e%2e/1.2.3/metadata",
        f"/dicom-web/studies/{UID}/%2E%2E/1.2.3/metadata",
        f"/dicom-web/studies/{UID}/../1.2.3/metadata",
        f"/dicom-web/studies/{UID}/.%2e/1.2.3/metadata",
        f"/dicom-web/studies/{UID}%2F..%2F1.2.3/metadata",
        f"/dicom-web/studies/{UID}//series",
        f"/dicom-web/studies/{UID}\\..\\1.2.3",
        f"/dicom-web/studies/{UID}/series?StudyInstanceUID=1.2.3",
        f"/dicom-web/studies/{UID}/series?0020000d=1.2.3",
        "/dicom-web/studies/1..2/metadata",
        "/dicom-web/studies/1.2./metadata",
        "/dicom-web/studies/" + "1." * 40 + "1/metadata",  # longer than a UID may be
        f"/dicom-web/studies/{UID}#/../../studies/1.2.3/metadata",  # Orthanc reads past '#'
        f"/dicom-web/studies/{UID}/metadata?_method=DELETE",
    ],
)
def test_anything_else_is_confined_to_no_study(path: str) -> None:
    assert study_of(path) is None
