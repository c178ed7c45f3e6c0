"""Orthanc glue for the central archive: encrypted S3 storage area and a status route.

The only central module that imports `orthanc` (with glue_common); the logic lives in the
`imgcloud` package.
"""

import json

import glue_common
import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__

CONFIG, CONFIGURATION = glue_common.load("central")
STORAGE = glue_common.register_storage("central", CONFIGURATION)


def _status(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(
        json.dumps({"role": CONFIG.role, "version": __version__, "storage": STORAGE}),
        "application/json",
    )


orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded, storage {STORAGE}")
