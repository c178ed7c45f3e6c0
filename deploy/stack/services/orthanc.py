"""Orthanc processes: the central archive and one edge per hospital.

Each process's configuration is the repo's static file (`central-orthanc/orthanc.json`,
`edge-orthanc/orthanc.json`) merged with what this stack decides at run time (ports,
paths, credentials, peers), written to the state directory. The shared base is in
orthanc_base.py, the central nodes in central.py (both importable from here, as before).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth.provision import gateway_client_id

from ...release import ensure_key_pair
from ..context import INSTITUTION_A, INSTITUTION_B, REALM, StackContext
from ..pki import issue_leaf
from ..sandbox import PLUGIN_DIR
from .central import CentralOrthanc as CentralOrthanc  # callers import it from here
from .orthanc_base import OrthancService
from .orthanc_base import deep_merge as deep_merge  # callers import it from here

HOSPITAL_PACS_AET = "HOSP_PACS"
DEMO_MODALITY_AET = "DEMO_CT"
# the subject of the PACS stand-ins' certificate (the launcher's "hospital-pacs" leaf), as
# nginx prints it: the one certificate the sidecars let claim HOSP_PACS
HOSPITAL_PACS_SUBJECT = f"CN={HOSPITAL_PACS_AET}"
# the DNS name the PACS stand-ins' certificate alone carries, which the edge's sidecar checks
# when it connects to a PACS (not localhost: every leaf of the local CA has that)
HOSPITAL_PACS_TLS_NAME = "hospital-pacs.imaging-cloud.test"
EDGE_STABLE_AGE_S = 3  # the static config's 60 s suits hospitals; the local stack is faster.


@dataclass(frozen=True)
class DicomPeer:
    """An AE title an edge talks to and which of its two listeners that AE may use.

    A TLS-only peer reaches the edge through the edge's TLS sidecar (deploy/stack/services/
    dicom_tls.py) only with a client certificate of `certificate_subject`, and Orthanc sees
    it come from `source_address`, the sidecar's address for that certificate alone; the
    edge reaches it through the sidecar too, at `outbound_port` on that address, which opens
    mutual TLS to `host:port` (its certificate checked against the hospital CA for
    `server_name`)."""

    aet: str
    host: str
    port: int
    tls_only: bool = False
    outbound_port: int = 0  # a TLS-only peer's port on the sidecar's address
    source_address: str = ""  # a TLS-only peer's: the sidecar's address for its certificate
    certificate_subject: str = ""  # a TLS-only peer's client certificate (RFC 2253)
    # the name its certificate must carry, one no other leaf of the CA has (each has
    # localhost): required for a TLS-only peer (dicom_tls.outbound_server)
    server_name: str = ""


def dicom_modality(aet: str, port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """A DicomModalities entry of an edge in the long form: C-STORE and C-ECHO; C-FIND and
    C-MOVE passed to the edge plugin, which decides per AE (ImagingCloud.QueryRetrieveAETs)
    and audits each answer and refusal; never C-GET (Orthanc's core answers it, unaudited)."""
    return {
        "AET": aet,
        "Host": host,
        "Port": port,
        "AllowEcho": True,
        "AllowStore": True,
        "AllowFind": True,  # the plugin is the gate: a refusal by Orthanc is not audited
        "AllowMove": True,
        "AllowGet": False,
        "AllowFindWorklist": False,
        "AllowStorageCommitment": False,
        "AllowTranscoding": True,
    }


class EdgeOrthanc(OrthancService):
    role = "edge"
    static_config = "edge-orthanc/orthanc.json"
    institution: str = ""
    letter: str = ""
    cipher: str = "aes-256-gcm"
    # Where the TLS sidecar connects to Orthanc from with the PACS's certificate: a loopback
    # address of this edge's own (Linux routes all of 127/8 to lo), named by the PACS's
    # DicomModalities entry only. Another TLS-only AE would need an address of its own.
    tls_source_address: str = ""

    def __init__(self, ctx: StackContext) -> None:
        super().__init__(ctx)
        self.name = f"edge-{self.letter.lower()}"
        self.http_port = f"edge_{self.letter.lower()}_http"
        self.dicom_port = f"edge_{self.letter.lower()}_dicom"
        self.ports = (self.http_port, self.dicom_port)
        self.http_user = f"edge-{self.letter.lower()}-admin"
        self.password_key = f"edge_{self.letter.lower()}_orthanc"

    @property
    def aet(self) -> str:
        return f"EDGE_{self.institution}"

    def runtime_config(self) -> dict[str, Any]:
        plugins = PLUGIN_DIR
        return self.common_runtime() | {
            "Name": f"imaging-cloud-edge-{self.institution}",
            "DicomAet": self.aet,
            "DicomPort": self.ctx.ports[self.dicom_port],
            "StableAge": EDGE_STABLE_AGE_S,
            "Plugins": [
                str(plugins / "libOrthancPython.so"),
                str(plugins / "libOrthancDicomWeb.so"),
            ],
            "PythonScript": str(self.ctx.settings.repo_root / "orthanc-plugins/edge_plugin.py"),
            "DicomModalities": self.local_modalities(),
            # every DicomAlwaysAllow* false, whatever the static file says: Orthanc takes a
            # missing Echo or Store as true and then skips its AE and host check
            **{
                f"DicomAlwaysAllow{op}": False
                for op in ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")
            },
            # Central through the HTTPS gateway, as the hospital's gateway service account
            # (no password of central's: the edge's token is checked at the gateway).
            "OrthancPeers": {"central": {"Url": f"{self.ctx.gateway_url}/orthanc/"}},
            "HttpsCACertificates": str(self._gateway_ca_file()),
            "ImagingCloud": {
                "Institution": self.institution,
                "QueueFile": str(self.home / "forward-queue.sqlite"),
                "HospitalPacs": HOSPITAL_PACS_AET,
                # who may C-FIND and C-MOVE here (the plugin refuses and audits the others)
                "QueryRetrieveAETs": [HOSPITAL_PACS_AET],
                # which AE titles may use which DICOM listener (checked at plugin load)
                "DicomListeners": self.dicom_listeners(),
                # study records go to the indexer through the gateway, as the hospital's
                # gateway service account (client credentials)
                "Indexer": {
                    "ApiUrl": f"{self.ctx.gateway_url}/api",
                    "TokenUrl": (
                        f"{self.ctx.keycloak_public_url}/realms/{REALM}"
                        "/protocol/openid-connect/token"
                    ),
                    "ClientId": gateway_client_id(self.institution),
                    "ClientSecretFile": str(self._gateway_secret_file()),
                },
                # Hospitals keep the static 300 s cap; the local stack recovers faster.
                "ForwardRetryMaxSeconds": 20,
                # the fleet (#15): the platform's release public key (a copy in this
                # Orthanc's key folder; the private key stays in the state's release/),
                # releases installed side by side in its home, the CA's expiry reported
                "ReleasePublicKey": str(self._release_public_key()),
                "ReleaseDir": str(self.home / "releases"),
                "CertificateFiles": {"ca": str(self._gateway_ca_file())},
                "Storage": {
                    "KeyRingFile": str(self.key_ring_file),
                    "Algorithm": self.cipher,
                    "Filesystem": {"Root": str(self.home / "objects")},
                },
            },
        }

    def _gateway_secret_file(self) -> Path:
        secret = self.ctx.secrets[f"gateway_{self.institution.lower()}"]
        return self.write_private("gateway.json", json.dumps({"ClientSecret": secret}))

    @property
    def restart_marker(self) -> Path:
        """Written by the edge plugin (imgcloud.upgrade.RESTART_MARKER) when Orthanc is to
        be started again after it exits: an upgrade, a rollback, a trial boot."""
        return self.home / "releases" / "restart-requested"

    def argv(self) -> list[str]:
        """Orthanc under deploy.release's supervisor (the recorded process; same process
        group, so the launcher's stop and kill reach both): it starts Orthanc again only
        when the plugin asked for it, for the one-click upgrade (#15)."""
        python = str(self.ctx.settings.venv_bin / "python")
        supervisor = [python, "-m", "deploy.release", "supervise"]
        return [*supervisor, "--marker", str(self.restart_marker), "--", *super().argv()]

    def _release_public_key(self) -> Path:
        _, public = ensure_key_pair(self.ctx.state)
        return self.write_private("release-public.pem", public.read_text())

    def _gateway_ca_file(self) -> Path:
        """The local CA's certificate, copied into the home: pki/ is root's own."""
        path = self.home / "gateway-ca.pem"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_bytes(self.ctx.pki["ca_cert"].read_bytes())
        return path

    @property
    def tls_port(self) -> str:
        """The ports.json name of this edge's mutual-TLS DICOM listener (the sidecar)."""
        return f"edge_{self.letter.lower()}_dicom_tls"

    def dicom_peers(self) -> list[DicomPeer]:
        """The AE titles this edge talks to in the local stack, all on loopback: the demo
        modality simulator over plain TCP, the hospital PACS stand-in over mutual TLS only
        (in, through the sidecar's listener; out, through the sidecar's port for it)."""
        low = self.letter.lower()
        return [
            DicomPeer(DEMO_MODALITY_AET, "127.0.0.1", 104),
            DicomPeer(
                HOSPITAL_PACS_AET,
                "127.0.0.1",
                self.ctx.ports[f"hospital_pacs_{low}"],
                tls_only=True,
                outbound_port=self.ctx.ports[f"edge_{low}_pacs_tls"],
                source_address=self.tls_source_address,
                certificate_subject=HOSPITAL_PACS_SUBJECT,
                server_name=HOSPITAL_PACS_TLS_NAME,
            ),
        ]

    def local_modalities(self) -> dict[str, dict[str, Any]]:
        """DicomModalities in the long form (the short form allows everything). Orthanc
        passes each one's C-FIND and C-MOVE to the edge plugin, which lets only
        ImagingCloud.QueryRetrieveAETs (the hospital PACS stand-in, which also receives
        pushed and fetched-back studies) through and audits the refusals too: the demo
        modality simulator may only send (C-STORE, C-ECHO). C-GET is refused to every AE by
        Orthanc: it cannot be audited (Orthanc gives plugins no hook for it). A TLS-only AE
        is at the sidecar's address for its certificate: Orthanc (DicomCheckModalityHost)
        refuses an association claiming it from anywhere else, the plain port and other
        certificates included."""
        modalities = {}
        for peer in self.dicom_peers():
            if peer.tls_only:
                entry = dicom_modality(peer.aet, peer.outbound_port, peer.source_address)
            else:
                entry = dicom_modality(peer.aet, peer.port, peer.host)
            modalities[peer.aet] = entry
        return modalities

    def dicom_listeners(self) -> dict[str, Any]:
        """ImagingCloud.DicomListeners: each TLS-only AE, its certificate and address."""
        return {
            "TlsPeers": [
                {
                    "AET": p.aet,
                    "CertificateSubject": p.certificate_subject,
                    "SourceAddress": p.source_address,
                }
                for p in self.dicom_peers()
                if p.tls_only
            ]
        }

    def tls_leaf(self) -> tuple[Path, Path]:
        """This edge's certificate and key (the local CA's), for its TLS sidecar."""
        return issue_leaf(self.ctx.pki["ca_cert"].parent, self.name, self.aet)


class EdgeA(EdgeOrthanc):
    institution = INSTITUTION_A
    letter = "A"
    tls_source_address = "127.0.0.2"


class EdgeB(EdgeOrthanc):
    institution = INSTITUTION_B
    letter = "B"
    # Hospital B runs the national-crypto profile (GB/T 39786), so the local stack
    # exercises both ciphers. Both edges have both DICOM listeners.
    cipher = "sm4-gcm"
    tls_source_address = "127.0.0.3"
