"""Orthanc glue for the central archive: encrypted S3 storage area, the SHA-256 of every
instance stored, verification and pushes.

The only central module that imports `orthanc` (with glue_common). It registers Orthanc's
callbacks and translates them; the logic is imgcloud.central_app.CentralApp, the settings
imgcloud.plugin_settings.CentralSettings.
"""

import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.central_app import CentralApp
from imgcloud.metrics import MetricsPublisher, central_sample, orthanc_setter
from imgcloud.plugin_settings import CentralSettings

SETTINGS = glue_common.load("central", CentralSettings.from_orthanc)
STORAGE, _ARCHIVE = glue_common.register_storage("central", SETTINGS.storage)


class _Orthanc:
    """imgcloud.central_app.CentralOrthanc through the SDK."""

    @staticmethod
    def instance_id(sop_instance_uid: str) -> str | None:
        try:
            return orthanc.LookupInstance(sop_instance_uid) or None
        except orthanc.OrthancException:
            return None

    @staticmethod
    def holds_study(study_instance_uid: str) -> bool:
        try:
            return bool(orthanc.LookupStudy(study_instance_uid))
        except orthanc.OrthancException:
            return False

    @staticmethod
    def get_json(path: str):
        return json.loads(orthanc.RestApiGet(path))

    @staticmethod
    def delete(path: str) -> None:
        orthanc.RestApiDelete(path)

    @staticmethod
    def log_warning(message: str) -> None:
        orthanc.LogWarning(message)

    @staticmethod
    def instance_order(study_uid: str, series_uid: str | None) -> list[list[str]]:
        """Instance IDs per series as Orthanc lists them, which is the order DICOMweb reads a
        study or series in (from the HTTP filter's thread, an Orthanc thread)."""
        study_id = orthanc.LookupStudy(study_uid)
        if series_uid:
            # only a series of the study in the URI (the gateway authorised that study): no
            # lookups, timings or counters about series of other studies
            series_id = orthanc.LookupSeries(series_uid)
            series = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))
            if series.get("ParentStudy") != study_id:
                raise LookupError("the series is not in the study named")
            listed = orthanc.RestApiGet(f"/series/{series_id}/instances")
        else:
            listed = orthanc.RestApiGet(f"/studies/{study_id}/instances")
        by_series: dict[str, list[str]] = {}
        for item in json.loads(listed):
            by_series.setdefault(item["ParentSeries"], []).append(item["ID"])
        return list(by_series.values())


# With an archive, the app wraps its store with the series read-ahead (its worker threads
# call the S3 client only, never this module).
APP = CentralApp(
    SETTINGS,
    STORAGE,
    _Orthanc(),
    _ARCHIVE.keys if _ARCHIVE else None,
    _ARCHIVE,
    _Orthanc.instance_order,
)


def _on_stored(dicom, instance_id):
    APP.stored(instance_id, dicom.GetInstanceData())


def _http_filter(uri, **request):
    """Every HTTP request is let through; a WADO-RS retrieval first announces its series to
    the archive's read-ahead (one indexed PostgreSQL query, in this HTTP thread)."""
    APP.http_request(request.get("method"), uri)
    return True


# the plugin's own values (object-store errors) in Orthanc's /tools/metrics-prometheus
METRICS = MetricsPublisher(central_sample(), orthanc_setter(orthanc))


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        METRICS.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        METRICS.stop()
        APP.close()  # the registries' PostgreSQL pools, before Orthanc unloads the plugin


for _path, _route in APP.routes().items():
    glue_common.route(_path, _route)
orthanc.RegisterOnStoredInstanceCallback(_on_stored)
orthanc.RegisterIncomingHttpRequestFilter(_http_filter)
orthanc.RegisterOnChangeCallback(_on_change)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
