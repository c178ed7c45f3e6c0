"""The S3 bucket is reachable with the configured credentials, and only with them; the
rest of SeaweedFS (master, volume, filer, gRPC) refuses callers without the stack's keys."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from deploy.stack.client import StackClient
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import REPO_ROOT


def test_bucket_round_trip_with_configured_credentials(stack: StackClient) -> None:
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    key = f"tests/{uuid.uuid4()}"
    body = uuid.uuid4().bytes * 1000
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=body)
    try:
        assert s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read() == body
    finally:
        s3.delete_object(Bucket=stack["S3_BUCKET"], Key=key)


def test_wrong_secret_is_refused(stack: StackClient) -> None:
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], "wrong-secret-key-000000")
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket=stack["S3_BUCKET"])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# SeaweedFS's own servers (master, volume, filer) and their gRPC ports: only the S3 API,
# with the stack's keys, may reach the archive. A local process without the stack's
# secrets is the attacker here.


def _ports(stack: StackClient) -> dict[str, int]:
    return json.loads((Path(stack["STACK_DIR"]) / "ports.json").read_text())


def _url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture(scope="module")
def archived(stack: StackClient) -> Iterator[tuple[str, bytes, str]]:
    """An object put through S3, its key, body and the volume file id that holds it (read
    with `weed shell` and the stack's own gRPC certificate, as an operator would)."""
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    key = f"tests/unauthenticated/{uuid.uuid4()}"
    body = uuid.uuid4().bytes * 500
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=body)
    ports = _ports(stack)
    config_dir = Path(stack["STACK_DIR"]) / "seaweedfs" / "config"
    config_dir = config_dir if config_dir.is_dir() else Path(stack["STACK_DIR"])
    shell = subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "weed"),
            f"-config_dir={config_dir}",
            "shell",
            f"-master=127.0.0.1:{ports['weed_master']}.{ports['weed_master_grpc']}",
            f"-filer=127.0.0.1:{ports['weed_filer']}.{ports['weed_filer_grpc']}",
        ],
        input=f"fs.meta.cat /buckets/{stack['S3_BUCKET']}/{key}\nexit\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config_dir,
    )
    found = re.search(r'"fileId":\s*"([0-9]+,[0-9a-f]+)"', shell.stdout)
    assert found, f"weed shell gave no file id (rc {shell.returncode})"
    try:
        yield key, body, found.group(1)
    finally:
        s3.delete_object(Bucket=stack["S3_BUCKET"], Key=key)


def _refused(response: httpx.Response) -> bool:
    return response.status_code in (401, 403, 404, 405)


def test_filer_refuses_unauthenticated_reads_writes_and_deletes(
    stack: StackClient, archived: tuple[str, bytes, str]
) -> None:
    key, body, _fid = archived
    port = _ports(stack)["weed_filer"]
    path = f"/buckets/{stack['S3_BUCKET']}/{key}"
    with httpx.Client(timeout=10) as http:
        answers = {
            "GET object": http.get(_url(port, path)),
            "GET listing": http.get(_url(port, f"/buckets/{stack['S3_BUCKET']}/tests/")),
            "PUT object": http.put(_url(port, path), content=b"overwritten"),
            "POST new": http.post(_url(port, path + "-new"), files={"file": ("x", b"planted")}),
            "DELETE object": http.delete(_url(port, path)),
            "DELETE bucket": http.delete(
                _url(port, f"/buckets/{stack['S3_BUCKET']}?recursive=true")
            ),
        }
    assert {what: r.status_code for what, r in answers.items() if not _refused(r)} == {}
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    assert s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read() == body


def test_volume_server_refuses_a_real_file_id_without_a_token(
    stack: StackClient, archived: tuple[str, bytes, str]
) -> None:
    key, body, fid = archived
    port = _ports(stack)["weed_volume"]
    with httpx.Client(timeout=10) as http:
        answers = {
            "GET": http.get(_url(port, f"/{fid}")),
            "PUT": http.put(_url(port, f"/{fid}"), content=b"overwritten"),
            "POST": http.post(_url(port, f"/{fid}"), files={"file": ("x", b"overwritten")}),
            "DELETE": http.delete(_url(port, f"/{fid}")),
        }
    assert {what: r.status_code for what, r in answers.items() if r.status_code != 401} == {}
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    assert s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read() == body


@pytest.mark.parametrize(
    "path",
    [
        "/dir/assign",
        "/vol/grow?count=1",
        "/col/delete?collection=imaging-archive",
        "/vol/vacuum",
        "/dir/status",
        "/vol/status",
        "/submit",
        "/dir/lookup?volumeId=1",
    ],
)
def test_master_refuses_unauthenticated_admin_calls(stack: StackClient, path: str) -> None:
    port = _ports(stack)["weed_master"]
    with httpx.Client(timeout=10) as http:
        answers = [http.get(_url(port, path)), http.post(_url(port, path))]
    assert [r.status_code for r in answers if not _refused(r)] == []


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_plaintext_http2(port: int) -> bool:
    """True if the port speaks cleartext HTTP/2 (gRPC without TLS): it sends SETTINGS."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_H2_PREFACE)
        try:
            head = sock.recv(9)
        except (TimeoutError, ConnectionResetError):
            return False
    return len(head) == 9 and head[3] == 0x04


def _grpc_tls_without_client_certificate(port: int, ca: str) -> bool:
    """True if a TLS client without a certificate gets an HTTP/2 answer."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(_H2_PREFACE)
                head = tls.recv(9)
    except (ssl.SSLError, OSError):
        return False
    return len(head) == 9 and head[3] == 0x04


@pytest.mark.parametrize(
    "port_name", ["weed_master_grpc", "weed_volume_grpc", "weed_filer_grpc", "weed_s3_grpc"]
)
def test_grpc_ports_want_the_stack_client_certificate(stack: StackClient, port_name: str) -> None:
    port = _ports(stack)[port_name]
    assert not _answers_plaintext_http2(port)
    assert not _grpc_tls_without_client_certificate(port, stack["CA_CERT"])
