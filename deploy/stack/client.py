"""Talking to a running stack, as tools, tests and benchmarks do (reads var/stack.env)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
from pydicom.dataset import Dataset

from deploy.samples import modality

from .launcher import read_stack_env

# Orthanc 1.10.1's HTTP server closes an idle keep-alive connection after about 1 s and has
# no setting for it (KeepAliveTimeout came in 1.11.3): drop pooled connections sooner, or a
# request races the close and fails with "server disconnected".
ORTHANC_POOL_LIMITS = httpx.Limits(keepalive_expiry=0.5)


class StackClient:
    """Typed access to the stack.env contract plus a few REST helpers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    @classmethod
    def from_file(cls, path: Path) -> StackClient:
        return cls(read_stack_env(path))

    def ca_context(self) -> ssl.SSLContext:
        """TLS context trusting the stack's local CA (and nothing else)."""
        return ssl.create_default_context(cafile=self.env["CA_CERT"])

    def __getitem__(self, key: str) -> str:
        return self.env[key]

    def orthanc(self, which: str) -> httpx.Client:
        """An httpx client for 'CENTRAL_ORTHANC', 'EDGE_A' or 'EDGE_B'."""
        return httpx.Client(
            base_url=self.env[f"{which}_URL"],
            auth=(self.env[f"{which}_USER"], self.env[f"{which}_PASSWORD"]),
            timeout=30.0,
            limits=ORTHANC_POOL_LIMITS,
        )

    def send_to_edge(
        self, edge: str, datasets: Iterable[Dataset], calling_aet: str = "DEMO_CT"
    ) -> modality.StoreResult:
        """C-STORE to edge 'A' or 'B' as `calling_aet`, on the listener that AE may use."""
        port, tls = self.edge_dicom(edge, calling_aet)
        return modality.send(
            datasets,
            host="127.0.0.1",
            port=port,
            called_aet=self.env[f"EDGE_{edge}_AET"],
            calling_aet=calling_aet,
            tls=tls,
        )

    def edge_dicom(self, edge: str, calling_aet: str) -> tuple[int, ssl.SSLContext | None]:
        """Where `calling_aet` reaches edge 'A' or 'B': the mutual-TLS listener with the PACS
        stand-in's certificate for a TLS-only AE title, else the plain port."""
        if calling_aet in self.env[f"EDGE_{edge}_TLS_ONLY_AETS"].split(","):
            tls = modality.tls_context(
                self.env["CA_CERT"], self.env["PACS_TLS_CERT"], self.env["PACS_TLS_KEY"]
            )
            return int(self.env[f"EDGE_{edge}_DICOM_TLS_PORT"]), tls
        return int(self.env[f"EDGE_{edge}_DICOM_PORT"]), None

    def gateway(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.env["GATEWAY_URL"],
            verify=self.ca_context(),
            timeout=30.0,
            headers=headers,
        )

    def password_token(self, user: str, password: str) -> dict:
        """Tokens for a user from the realm, through the gateway (direct-access grant)."""
        url = (
            f"{self.env['KEYCLOAK_URL']}/realms/{self.env['KEYCLOAK_REALM']}"
            "/protocol/openid-connect/token"
        )
        response = httpx.post(
            url,
            data={
                "grant_type": "password",
                "client_id": self.env["OIDC_CLI_CLIENT_ID"],
                "username": user,
                "password": password,
                "scope": "openid",
            },
            verify=self.ca_context(),
            timeout=30.0,
        )
        response.raise_for_status()
        return response.json()

    def gateway_account_token(self, institution: str) -> str:
        """An access token of a hospital's gateway service account (client credentials),
        as its edge gets one: the client secret is in the stack's secrets file."""
        secrets = json.loads((Path(self.env["STACK_DIR"]) / "secrets.json").read_text())
        client_id = f"gateway-{institution.lower()}"
        response = httpx.post(
            f"{self.env['KEYCLOAK_URL']}/realms/{self.env['KEYCLOAK_REALM']}"
            "/protocol/openid-connect/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secrets[f"gateway_{institution.lower()}"]),
            verify=self.ca_context(),
            timeout=30.0,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


def find_study(orthanc: httpx.Client, study_instance_uid: str) -> str | None:
    """The Orthanc ID of a study by its Study Instance UID, or None."""
    response = orthanc.post("/tools/lookup", content=study_instance_uid)
    response.raise_for_status()
    for item in response.json():
        if item["Type"] == "Study":
            return str(item["ID"])
    return None


def wait_for_instances(
    orthanc: httpx.Client, study_instance_uid: str, count: int, timeout_s: float = 120.0
) -> str:
    """Wait until a study with `count` instances exists; return its Orthanc ID."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        study_id = find_study(orthanc, study_instance_uid)
        if study_id:
            seen = len(orthanc.get(f"/studies/{study_id}/instances").json())
            if seen >= count:
                return study_id
        time.sleep(1.0)
    raise TimeoutError(
        f"study {study_instance_uid}: {seen} of {count} instances after {timeout_s:.0f} s"
    )


def multipart_parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer (a WADO-RS retrieval), in order."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts
