"""Glue shared by the edge and central scripts: configuration, logging, storage area,
REST routes.

Imports `orthanc`, so it is loaded only inside Orthanc, like the role scripts.
"""

import json
import logging
from collections.abc import Callable
from typing import TypeVar, overload

import orthanc  # type: ignore[import-not-found]
from imgcloud import logs
from imgcloud.errors import ConfigurationError, StorageError
from imgcloud.local_api import InProcessTransport
from imgcloud.metrics import OBJECT_STORE_ERRORS
from imgcloud.routes import NotAllowed, Route
from imgcloud.storage.archive import EncryptedArchive
from imgcloud.storage.settings import StorageSettings

log = logging.getLogger("imgcloud.glue")


S = TypeVar("S")


def load(role_name: str, from_orthanc: Callable[[dict], S]) -> S:
    """The plugin's settings, built once from Orthanc's configuration (for instance
    EdgeSettings.from_orthanc); one clear log line and a raise if invalid."""
    logs.install(orthanc.LogInfo, orthanc.LogWarning, orthanc.LogError)
    try:
        return from_orthanc(json.loads(orthanc.GetConfiguration()))
    except ConfigurationError as exc:
        orthanc.LogError(f"imaging-cloud {role_name} plugin: invalid configuration: {exc}")
        raise


@overload
def register_storage(role_name: str, settings: StorageSettings) -> tuple[str, EncryptedArchive]: ...
@overload
def register_storage(
    role_name: str, settings: StorageSettings | None
) -> tuple[str, EncryptedArchive | None]: ...
def register_storage(
    role_name: str, settings: StorageSettings | None
) -> tuple[str, EncryptedArchive | None]:
    """Register the encrypted storage area if configured; returns a description and it."""
    if settings is None:
        return "orthanc-default", None
    try:
        archive = EncryptedArchive.from_settings(settings)
    except ConfigurationError as exc:
        orthanc.LogError(f"imaging-cloud {role_name} plugin: invalid configuration: {exc}")
        raise

    def create(uuid, content_type, data):
        try:
            archive.create(uuid, int(content_type), bytes(data))
        except StorageError as exc:
            log.error("storage create failed: %s", exc)
            OBJECT_STORE_ERRORS.add("create")
            raise

    def read(uuid, content_type):
        try:
            return archive.read(uuid, int(content_type))
        except StorageError as exc:
            log.error("storage read failed: %s", exc)
            OBJECT_STORE_ERRORS.add("read")
            raise

    def remove(uuid, content_type):
        try:
            archive.remove(uuid, int(content_type))
        except StorageError as exc:
            log.error("storage remove failed: %s", exc)
            OBJECT_STORE_ERRORS.add("remove")
            raise

    orthanc.RegisterStorageArea(create, read, remove)
    algorithm = settings.algorithm.name.lower().replace("_", "-")
    return f"encrypted-{settings.backend} ({algorithm})", archive


def send_status(output, status: int, text: str) -> None:  # type: ignore[no-untyped-def]
    """An error answer with a body: Python plugin 5.0 takes (status, body), 4.0 took
    (status, body, size)."""
    try:
        output.SendHttpStatus(status, text)
    except TypeError:
        output.SendHttpStatus(status, text, len(text.encode()))


def route(path: str, route: Route) -> None:
    """Register a REST route: methods it does not take get 405, a 200 answer is JSON,
    any other status goes out with its body through send_status."""

    def callback(output, uri, **request):  # type: ignore[no-untyped-def]
        reply = route.dispatch(
            request["method"],
            tuple(request.get("groups") or ()),
            request.get("get") or {},
            request.get("body") or b"",
        )
        if isinstance(reply, NotAllowed):
            output.SendMethodNotAllowed(reply.allowed)
        elif reply.status == 200:
            output.AnswerBuffer(reply.text(), "application/json")
        else:
            send_status(output, reply.status, reply.text())

    orthanc.RegisterRestCallback(path, callback)


def _rest_call(method: str, path: str, body: bytes) -> bytes:
    """One call to this Orthanc's built-in REST API through the SDK. With
    "Python": {"AllowThreads": true} the GIL is released for its duration, so Orthanc may
    call our storage area from its own threads meanwhile (a synchronous C-STORE job does)."""
    if method == "GET":
        return bytes(orthanc.RestApiGet(path))
    if method == "POST":
        return bytes(orthanc.RestApiPost(path, body))
    if method == "PUT":
        return bytes(orthanc.RestApiPut(path, body))
    if method == "DELETE":
        orthanc.RestApiDelete(path)
        return b""
    raise ValueError(f"no SDK call for HTTP method {method}")


def _error_code(exc: Exception) -> int | None:
    """The Orthanc error code of an SDK failure (its first argument), None for others."""
    if isinstance(exc, orthanc.OrthancException) and exc.args:
        try:
            return int(exc.args[0])
        except (TypeError, ValueError):
            return 500
    return None


def in_process_transport() -> InProcessTransport:
    """An httpx transport to this Orthanc's REST API through the SDK (no socket)."""
    return InProcessTransport(_rest_call, _error_code)
