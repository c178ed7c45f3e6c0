"""Orthanc glue for a hospital edge: forward studies to central through a durable queue,
compressed losslessly on the way (not in the modality's C-STORE: no callback of ours runs
there), confirm every instance by SHA-256, report status; fetch studies back from the
cloud, collect pushes from other hospitals, pull from the hospital PACS.

The only edge module that imports `orthanc` (with glue_common). It registers Orthanc's
callbacks and translates them; the edge itself is imgcloud.edge_app.EdgeApp, its REST
API imgcloud.edge_routes, its settings imgcloud.plugin_settings.EdgeSettings.

It is also the edge's stable loader (#15, imgcloud.upgrade.Boot): before anything else
it imports, it asks the installed code which release to run (ImagingCloud.ReleaseDir's
state.json: a verified release unpacked side by side, or the installed code) and puts
that release first on sys.path; a release that fails to import is rolled back within the
same load. After an upgrade Orthanc is shut down and started again (imgcloud.upgrade),
and this script chooses the new release.
"""

import json

import orthanc  # type: ignore[import-not-found]
from imgcloud.upgrade import Boot  # the installed code's loader, before any release


def _release_modules():  # type: ignore[no-untyped-def]
    """The modules of the chosen release (imported after the loader set sys.path)."""
    import glue_common
    from imgcloud import __version__
    from imgcloud.edge_app import EdgeApp
    from imgcloud.edge_routes import EdgeRoutes, method_name, refusal
    from imgcloud.plugin_settings import EdgeSettings

    return glue_common, __version__, EdgeApp, EdgeRoutes, method_name, refusal, EdgeSettings


BOOT = Boot.from_configuration(json.loads(orthanc.GetConfiguration()), orthanc.LogWarning)
glue_common, __version__, EdgeApp, EdgeRoutes, method_name, refusal, EdgeSettings = BOOT.load(
    _release_modules
)

SETTINGS = glue_common.load("edge", EdgeSettings.from_orthanc)
STORAGE, ARCHIVE = glue_common.register_storage("edge", SETTINGS.storage)


def _transcode(dicom: bytes, transfer_syntax: str) -> bytes:
    """DCMTK, for the policies other than JPEG-LS (imgcloud.edge_app.EdgeApp.encode)."""
    return orthanc.TranscodeDicomInstance(dicom, transfer_syntax).SerializeDicomInstance()


APP = EdgeApp(SETTINGS, ARCHIVE, STORAGE, glue_common.in_process_transport(), _transcode)


def _metrics_publisher():  # type: ignore[no-untyped-def]
    """The queue's and certificates' values in Orthanc's /tools/metrics-prometheus (the
    chosen release's imgcloud.metrics: the loader has imported that release's package)."""
    from imgcloud.metrics import MetricsPublisher, edge_sample, orthanc_setter

    return MetricsPublisher(
        edge_sample(APP.queue, SETTINGS.certificate_files), orthanc_setter(orthanc)
    )


METRICS = _metrics_publisher()


def _held(sop_instance_uid: str) -> str | None:
    try:
        return orthanc.LookupInstance(sop_instance_uid)
    except Exception:  # the SDK raises when there is no such instance
        return None


def _on_cstore(received):
    """Every C-STORE (modality, PACS) before Orthanc stores it: a DIMSE status, 0 to store
    (imgcloud.edge_app.EdgeApp.cstore_status). Uploads over REST need Orthanc's own
    credentials and are not filtered. What it stores, the edge expects: its IDs from its
    tags, its file for the encoder (EdgeApp.expect), so that no REST call follows."""
    tags = json.loads(received.GetInstanceSimplifiedJson())
    status = APP.cstore_status(str(tags.get("SOPInstanceUID") or ""), _held)
    if status == 0:
        try:
            APP.expect(tags, received.GetInstanceSize(), received.GetInstanceData)
        except Exception:  # only an optimisation: the C-STORE must not fail for it
            orthanc.LogWarning("imaging-cloud: the C-STORE's IDs were not kept; asked later")
    return status


def _study_of(instance_id):
    """An instance's study ID, asked of Orthanc (one the C-STORE filter did not see)."""
    return json.loads(orthanc.RestApiGet(f"/instances/{instance_id}/study"))["ID"]


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        APP.instance_arrived(resource_id, _study_of)
    elif change_type == orthanc.ChangeType.STABLE_STUDY:
        APP.study_stable(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        APP.start()  # resumes whatever a restart or crash left queued or sending
        METRICS.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        METRICS.stop()
        APP.stop()


def _on_find(answers, query, issuer_aet, called_aet):
    """C-FIND from any known AE: refused unless ImagingCloud.QueryRetrieveAETs names it, else
    answered from this edge's index; audited either way (imgcloud.dicom_scp). Raising fails
    the C-FIND."""
    asked = [
        (query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i), query.GetFindQueryValue(i))
        for i in range(query.GetFindQuerySize())
    ]

    def add(tags: dict) -> None:
        dicom = orthanc.CreateDicom(json.dumps(tags), None, orthanc.CreateDicomFlags.NONE)
        answers.FindAddAnswer(dicom)

    APP.scp.find(issuer_aet, called_aet, asked, add, answers.FindMarkIncomplete)


def _on_move(**request):
    """C-MOVE from any known AE, gated and audited as C-FIND (imgcloud.dicom_scp). Raising
    makes Orthanc answer the C-MOVE with a failure."""
    APP.scp.move(request)


def _http_filter(uri, **request):
    """Every HTTP request: a REST change to DICOM modalities is refused (403) and logged,
    as it would escape the load-time checks of DicomModalities."""
    method = method_name(request.get("method"))
    reason = refusal(method, uri)
    if reason is None:
        return True
    orthanc.LogWarning(
        f"imaging-cloud: refused {method} {uri!r} from {request.get('ip', '?')}: {reason}"
    )
    return False


orthanc.RegisterIncomingHttpRequestFilter(_http_filter)
orthanc.RegisterIncomingCStoreInstanceFilter(_on_cstore)
orthanc.RegisterFindCallback(_on_find)
orthanc.RegisterMoveCallback(_on_move)
orthanc.RegisterOnChangeCallback(_on_change)
for _path, _route in EdgeRoutes(APP, orthanc.LogWarning, ARCHIVE.keys).routes().items():
    glue_common.route(_path, _route)
orthanc.LogWarning(
    f"imaging-cloud edge plugin {__version__} loaded for {APP.institution}, storage {STORAGE}"
)
