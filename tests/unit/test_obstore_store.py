"""The obstore S3 backend's failure translation, bounded retries and timeouts.

Against real sockets on loopback: a port nobody listens on, a server that accepts and
never answers, and a small HTTP server that answers every request with a chosen status
and counts the attempts (the S3 replies themselves are checked against SeaweedFS in
tests/integration/test_obstore_backend.py).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from imgcloud.errors import ConfigurationError, ObjectNotFound, StorageUnavailable
from imgcloud.storage.backends import DEFAULT_S3_CLIENT, S3Settings, S3Store, s3_store
from imgcloud.storage.obstore_store import ObstoreS3Store
from imgcloud.storage.settings import storage_settings

SECRET = "not-a-real-secret-but-never-printed"


def settings(endpoint: str, **kw: object) -> S3Settings:
    base: dict = dict(
        endpoint=endpoint,
        region="us-east-1",
        bucket="archive",
        access_key="AKIDEXAMPLE",
        secret_key=SECRET,
        client="obstore",
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        max_attempts=3,
    )
    return S3Settings(**(base | kw))


class Answer(BaseHTTPRequestHandler):
    """Answers every request with the server's `status`; records (method, path, sha256)."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        server = self.server
        assert isinstance(server, Server)
        server.seen.append(
            (self.command, self.path, self.headers.get("x-amz-content-sha256") or "")
        )
        body = b"<Error><Code>Whatever</Code></Error>"
        self.send_response(server.status)
        self.send_header("content-length", str(len(body)))
        self.send_header("etag", '"0"')  # object_store wants one on a PUT's 200
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    status = 500
    seen: list[tuple[str, str, str]]


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Answer)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_factory_picks_the_client_and_refuses_unknown_names() -> None:
    assert isinstance(s3_store(settings("http://127.0.0.1:9")), ObstoreS3Store)
    assert isinstance(s3_store(settings("http://127.0.0.1:9", client="boto3")), S3Store)
    with pytest.raises(ValueError, match="not one of"):
        s3_store(settings("http://127.0.0.1:9", client="aws-cli"))


def test_no_credentials_in_repr() -> None:
    store = ObstoreS3Store(settings("http://127.0.0.1:9"))
    assert SECRET not in repr(store) and "AKIDEXAMPLE" not in repr(store)
    assert SECRET not in repr(store.settings)


@pytest.mark.parametrize("action", ["put", "get"])
def test_missing_object_is_object_not_found_without_retry(server: Server, action: str) -> None:
    server.status = 404
    store = s3_store(settings(url(server)))
    with pytest.raises(ObjectNotFound, match="not found in bucket archive"):
        store.put("ab/cd/x.1", b"sealed") if action == "put" else store.get("ab/cd/x.1")
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", [403, 401])
def test_refused_credentials_are_unavailable_not_missing(server: Server, status: int) -> None:
    server.status = status
    store = s3_store(settings(url(server)))
    with pytest.raises(StorageUnavailable, match="access refused") as caught:
        store.get("ab/cd/x.1")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_a_bounded_number_of_times(server: Server, status: int) -> None:
    server.status = status
    store = s3_store(settings(url(server), max_attempts=3))
    for action in ("put", "get"):
        server.seen.clear()
        with pytest.raises(StorageUnavailable) as caught:
            store.put("ab/cd/x.1", b"sealed") if action == "put" else store.get("ab/cd/x.1")
        assert len(server.seen) == 3, (action, server.seen)
        assert "127.0.0.1" not in str(caught.value)  # the message is ours, not obstore's


def test_plain_http_signs_the_payload_hash(server: Server) -> None:
    server.status = 200
    s3_store(settings(url(server))).put("ab/cd/x.1", b"sealed")
    [(method, path, sha256)] = server.seen
    assert (method, path) == ("PUT", "/archive/ab/cd/x.1")
    # the body is covered by the signature on a plain link, not UNSIGNED-PAYLOAD
    assert sha256 == hashlib.sha256(b"sealed").hexdigest()


def test_the_environment_cannot_turn_signing_off(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """obstore reads AWS_* variables; AWS_SKIP_SIGNATURE would send requests unsigned."""
    monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("AWS_ALLOW_INVALID_CERTIFICATES", "true")
    server.status = 200
    s3_store(settings(url(server))).put("ab/cd/x.1", b"sealed")
    [(_method, _path, sha256)] = server.seen
    assert sha256 == hashlib.sha256(b"sealed").hexdigest()


def test_unsigned_payload_over_plain_http_is_refused() -> None:
    with pytest.raises(ValueError, match="plain HTTP"):
        ObstoreS3Store(settings("http://127.0.0.1:9"), unsigned_payload=True)


def test_nobody_listening_is_unavailable_quickly() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = s3_store(settings(f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"S3 put ab/cd/x\.1"):
        store.put("ab/cd/x.1", b"sealed")
    assert time.monotonic() - started < 10


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts connections (the kernel does), never reads or answers
        store = s3_store(settings(f"http://127.0.0.1:{silent.getsockname()[1]}"))
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match=r"S3 get ab/cd/x\.1"):
            store.get("ab/cd/x.1")
        # 3 attempts of at most connect + read timeout (2 s) each, plus backoff
        assert time.monotonic() - started < 3 * 2 + 3


@pytest.mark.parametrize(
    ("given", "expected"), [({}, DEFAULT_S3_CLIENT), ({"Client": "obstore"}, "obstore")]
)
def test_the_storage_section_names_the_client(
    monkeypatch: pytest.MonkeyPatch, given: dict, expected: str
) -> None:
    monkeypatch.setenv("IMGCLOUD_S3_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("IMGCLOUD_S3_SECRET_KEY", SECRET)
    parsed = storage_settings(section(given))
    assert parsed is not None and parsed.s3 is not None and parsed.s3.client == expected


def test_an_unknown_client_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLOUD_S3_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("IMGCLOUD_S3_SECRET_KEY", SECRET)
    with pytest.raises(ConfigurationError, match="Client"):
        storage_settings(section({"Client": "aws-cli"}))


def section(s3: dict) -> dict:
    return {
        "ImagingCloud": {
            "Storage": {
                "Backend": "s3",
                "KeyRingFile": "/nonexistent/keyring.json",
                "SmallAttachments": "object-store",
                "S3": {"Bucket": "archive", "Endpoint": "http://127.0.0.1:9"} | s3,
            }
        }
    }
