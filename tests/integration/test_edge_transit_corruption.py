"""An instance corrupted between the edge and central is caught by its SHA-256 and resent.

A relay of the test's own (plain HTTP on 127.0.0.1, forwarding to the gateway over
HTTPS) stands between edge A and central, as a faulty link would: it flips a byte in the
first uploads it passes on. Edge A is restarted with the relay as its central peer for
this test only; nothing in the plugins knows about it.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pydicom
import pytest

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import load_context, service, start_service, stop_service
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually
from .test_edge_resilience import forwarding_state

CORRUPTED = 2
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class CorruptingRelay(ThreadingHTTPServer):
    """Passes every request on to `upstream`, flipping one byte in each of the first
    `corrupt` instance uploads (POST .../instances) after the edge hashed them."""

    daemon_threads = True

    def __init__(self, upstream: str, ca_cert: str, corrupt: int) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.upstream = upstream.rstrip("/")
        trusted = ssl.create_default_context(cafile=ca_cert)
        self.client = httpx.Client(verify=trusted, timeout=httpx.Timeout(60, connect=5))
        self.left = corrupt
        self.corrupted = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def in_transit(self, method: str, path: str, body: bytes) -> bytes:
        if method != "POST" or not path.endswith("/instances") or not body:
            return body
        with self.lock:
            if self.left <= 0:
                return body
            self.left -= 1
            self.corrupted += 1
        position = len(body) * 3 // 4  # inside the pixel data of any image worth sending
        return body[:position] + bytes([body[position] ^ 0xFF]) + body[position + 1 :]


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CorruptingRelay

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            answer = self.server.client.request(
                self.command,
                self.server.upstream + self.path,
                content=self.server.in_transit(self.command, self.path, body),
                headers=headers,
            )
            status, content = answer.status_code, answer.content
            out = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in HOP_BY_HOP | {"content-encoding"}
            }
        except httpx.HTTPError as exc:
            status, content, out = 502, f"relay: {type(exc).__name__}".encode(), {}
        self.send_response(status)
        for key, value in out.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = _relay

    def log_message(self, format: str, *args: object) -> None:
        pass  # the edge's and gateway's own logs say what went through


@pytest.fixture
def bad_link(stack_settings: StackSettings) -> Iterator[CorruptingRelay]:
    ctx = load_context(stack_settings)
    relay = CorruptingRelay(ctx.gateway_url, str(ctx.pki["ca_cert"]), CORRUPTED)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    edge = service(ctx, "edge-a")
    stop_service(ctx, "edge-a")
    try:
        edge.prepare()  # the configuration as the launcher writes it, then the relay as peer
        path = edge.home / "orthanc.json"  # type: ignore[attr-defined]
        config = json.loads(path.read_text())
        config["OrthancPeers"]["central"]["Url"] = f"{relay.url}/orthanc/"
        path.write_text(json.dumps(config, indent=2))
        edge.start()
        edge.wait_healthy(stack_settings.start_timeout_s)
        edge.after_healthy()
        yield relay
    finally:
        stop_service(ctx, "edge-a")
        start_service(ctx, "edge-a")  # its own configuration again: central through the gateway
        relay.shutdown()
        relay.server_close()
        relay.client.close()


def file_hashes(client, study_uid: str) -> dict[str, str]:
    study_id = find_study(client, study_uid)
    hashes = {}
    for item in client.get(f"/studies/{study_id}/instances").json():
        raw = client.get(f"/instances/{item['ID']}/file").content
        hashes[item["MainDicomTags"]["SOPInstanceUID"]] = hashlib.sha256(raw).hexdigest()
    return hashes


def test_corrupted_upload_is_detected_and_resent(
    stack: StackClient, stack_settings: StackSettings, bad_link: CorruptingRelay
) -> None:
    central_log = stack_settings.log("central")
    discards_before = central_log.read_text(errors="replace").count("hash mismatch")
    study = make_study(
        random.randrange(100_000, 900_000),  # noqa: S311 - a fresh study, not a secret
        "CT",
        instances=10,
        institution_code=stack["EDGE_A_INSTITUTION"],
    )
    uid = study.exam.study_instance_uid
    result = stack.send_to_edge("A", study.instances())
    assert result.ok and result.sent == 10
    eventually(
        lambda: (forwarding_state(stack, uid) or {}).get("state") == "delivered",
        what="delivery despite the bad link",
        timeout=180,
    )
    assert bad_link.corrupted == CORRUPTED  # the uploads did go through the bad link
    with stack.orthanc("EDGE_A") as edge:
        eventually(  # the received copies are replaced by the forwarded ones once confirmed
            lambda: edge.get("/imaging-cloud/status").json()["replaces_pending"] == 0,
            what="the edge's local copies replaced by the compressed ones",
            timeout=60,
        )
        at_edge = file_hashes(edge, uid)
        edge_bytes = sum(
            len(edge.get(f"/instances/{i['ID']}/file").content)
            for i in edge.get(f"/studies/{find_study(edge, uid)}/instances").json()
        )
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        at_central = file_hashes(central, uid)
        originals = {str(d.SOPInstanceUID): d for d in study.instances()}
        study_id = find_study(central, uid)
        for item in central.get(f"/studies/{study_id}/instances").json():
            got = pydicom.dcmread(io.BytesIO(central.get(f"/instances/{item['ID']}/file").content))
            assert np.array_equal(got.pixel_array, originals[str(got.SOPInstanceUID)].pixel_array)
    assert at_central == at_edge  # every instance at central is exactly what the edge holds
    # central noticed the two bad copies, threw them away, and the edge sent them again
    discards = central_log.read_text(errors="replace").count("hash mismatch") - discards_before
    assert discards == CORRUPTED
    assert forwarding_state(stack, uid)["bytes_sent"] > edge_bytes  # type: ignore[index]
