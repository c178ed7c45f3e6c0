"""Orthanc glue for a hospital edge: load config, forward stable studies to central.

The only edge module that imports `orthanc`; the logic lives in the `imgcloud` package.
"""

import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.compression import CompressionPolicy, compress
from imgcloud.errors import ConfigurationError, ForwardingError
from imgcloud.forwarding import StudyForwarder

CONFIG, CONFIGURATION = glue_common.load("edge")
STORAGE = glue_common.register_storage("edge", CONFIGURATION)
try:
    COMPRESSION = CompressionPolicy.from_name(
        CONFIGURATION["ImagingCloud"].get("Compression", "jpeg-ls-lossless")
    )
except ConfigurationError as exc:
    orthanc.LogError(f"imaging-cloud edge plugin: invalid configuration: {exc}")
    raise


def _transcode(dicom: bytes, transfer_syntax: str) -> bytes:
    return orthanc.TranscodeDicomInstance(dicom, transfer_syntax).SerializeDicomInstance()


def _on_received(dicom, origin):
    """Compress every instance losslessly on arrival, before it is stored or forwarded."""
    compressed = compress(bytes(dicom), COMPRESSION, _transcode)
    if compressed is None:
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    return orthanc.ReceivedInstanceAction.MODIFY, compressed


def _send(study_id: str) -> None:
    body = json.dumps({"Resources": [study_id], "Synchronous": True})
    try:
        orthanc.RestApiPost(f"/peers/{CONFIG.forward_peer}/store", body)
    except orthanc.OrthancException as exc:
        raise ForwardingError(str(exc)) from exc


FORWARDER = StudyForwarder(send=_send, retry_max_s=CONFIG.forward_retry_max_s)


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        FORWARDER.enqueue(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        FORWARDER.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        FORWARDER.stop()


def _status(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(
        json.dumps(
            {
                "role": CONFIG.role,
                "institution": CONFIG.institution,
                "storage": STORAGE,
                "compression": COMPRESSION.name,
                "version": __version__,
                "forward_queue_depth": FORWARDER.depth(),
                "forwarded_studies": FORWARDER.delivered,
                "forward_failures": FORWARDER.failures,
            }
        ),
        "application/json",
    )


orthanc.RegisterReceivedInstanceCallback(_on_received)
orthanc.RegisterOnChangeCallback(_on_change)
orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.LogWarning(
    f"imaging-cloud edge plugin {__version__} loaded for {CONFIG.institution}, storage {STORAGE}"
)
