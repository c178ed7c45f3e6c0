"""Orthanc glue for the central archive.

Walking-skeleton version: validates its configuration and answers a status route. The
encrypted S3 storage area arrives with the archive issue.
"""

import json

import orthanc  # type: ignore[import-not-found]
from imgcloud import __version__
from imgcloud.config import PluginConfig
from imgcloud.errors import ConfigurationError

try:
    CONFIG = PluginConfig.from_orthanc(json.loads(orthanc.GetConfiguration()))
except ConfigurationError as exc:
    orthanc.LogError(f"imaging-cloud central plugin: invalid configuration: {exc}")
    raise


def _status(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(
        json.dumps({"role": CONFIG.role, "version": __version__, "storage": "filesystem"}),
        "application/json",
    )


orthanc.RegisterRestCallback("/imaging-cloud/status", _status)
orthanc.LogWarning(f"imaging-cloud central plugin {__version__} loaded")
