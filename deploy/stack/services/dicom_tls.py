"""Each edge's mutual-TLS DICOM listener: an nginx stream proxy beside its Orthanc.

Orthanc's own DICOM port is the edge's plain listener, where every gate of the edge (its
C-STORE, C-FIND and C-MOVE rules and their audit) lives. The sidecar terminates mutual TLS
(the hospital CA's certificates, TLS 1.2 or 1.3) and passes an association to that port
only from the client certificate of a TLS-only peer, from a loopback address of that
peer's own; the edge's DicomModalities name that address for that peer's AE title only, so
Orthanc refuses the title on the plain port and from any other certificate, and every other
title through the sidecar. Any other certificate of the CA reaches nothing. Outbound, the
sidecar listens on each peer's address, at a port of its own, and opens mutual TLS to the
peer (deploy/edge/dicom-tls.conf.template).
"""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

from ..errors import PortInUse, PrerequisiteMissing
from .gateway import NGINX, NginxService, render_template
from .orthanc import DicomPeer, EdgeA, EdgeB, EdgeOrthanc

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # libnginx-mod-stream
CONNECT_TIMEOUT = "10s"
IDLE_TIMEOUT = "600s"
# what ImagingCloud.DicomListeners lets a certificate subject hold (imgcloud/config.py):
# no quote, backslash, dollar, brace or semicolon can end up in nginx's configuration
_SAFE_SUBJECT = re.compile(r"[A-Za-z0-9 _.,=-]+")


def peer_subject_line(peer: DicomPeer) -> str:
    """The map line that gives `peer`'s certificate, and no other, its source address: its
    subject matched whole, case included, as text (PCRE's \\Q...\\E), up to the very end
    (\\z: $ would also match before a final newline)."""
    if not _SAFE_SUBJECT.fullmatch(peer.certificate_subject) or not peer.source_address:
        raise ValueError(f"{peer.aet}: no usable certificate subject or source address")
    return f'        "~^\\Q{peer.certificate_subject}\\E\\z" {peer.source_address};\n'


def outbound_server(peer: DicomPeer, cert: Path, key: Path, ca: Path) -> str:
    """The nginx stream server that carries the edge's associations to `peer` over TLS."""
    if not peer.server_name or peer.server_name == "localhost":
        # every leaf of the local CA carries localhost: any of them would pass as the peer
        raise ValueError(f"{peer.aet}: no server name of its own to check its certificate for")
    return f"""    # to {peer.aet}
    server {{
        listen {peer.source_address}:{peer.outbound_port};
        proxy_pass {peer.host}:{peer.port};
        proxy_ssl on;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        proxy_ssl_certificate {cert};
        proxy_ssl_certificate_key {key};
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 1;
        proxy_ssl_name {peer.server_name};
        proxy_ssl_server_name on;
    }}
"""


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class DicomTlsSidecar(NginxService):
    edge_class: type[EdgeOrthanc] = EdgeOrthanc
    stop_signal = signal.SIGQUIT  # graceful: open associations finish first

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.edge = self.edge_class(ctx)
        self.name = f"{self.edge.name}-tls"
        self.ports = (self.edge.tls_port,)

    @property
    def home(self) -> Path:
        return self.ctx.state / self.name

    def _tls_peers(self) -> list[DicomPeer]:
        return [p for p in self.edge.dicom_peers() if p.tls_only]

    def _listeners(self) -> list[tuple[str, int]]:
        inbound = ("127.0.0.1", self.ctx.ports[self.edge.tls_port])
        return [inbound, *((p.source_address, p.outbound_port) for p in self._tls_peers())]

    def prepare(self) -> None:
        for path, package in ((NGINX, "nginx"), (STREAM_MODULE, "libnginx-mod-stream")):
            if not path.exists():
                raise PrerequisiteMissing(self.name, f"{path} not found ({package}): make install")
        for host, port in self._listeners()[1:]:
            if can_connect(host, port):
                raise PortInUse(self.name, f"{host}:{port} is in use by another program")
        # root's only (0700): nginx's master reads the key and writes the logs, its workers
        # (www-data) only pass bytes and need nothing inside
        (self.home / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key = self.edge.tls_leaf()
        ca = self.ctx.pki["ca_cert"]
        peers = self._tls_peers()
        outbound = "".join(outbound_server(p, cert, key, ca) for p in peers)
        conf = render_template(
            (self.ctx.settings.repo_root / "deploy/edge/dicom-tls.conf.template").read_text(),
            {
                "SIDECAR_HOME": str(self.home),
                "SIDECAR_LOGS": str(self.home / "logs"),
                "NGINX_USER": "www-data",
                "STREAM_MODULE": str(STREAM_MODULE),
                "CONNECT_TIMEOUT": CONNECT_TIMEOUT,
                "IDLE_TIMEOUT": IDLE_TIMEOUT,
                "TLS_LISTEN": f"127.0.0.1:{self.ctx.ports[self.edge.tls_port]}",
                "EDGE_CERT": str(cert),
                "EDGE_KEY": str(key),
                "CA_CERT": str(ca),
                "TLS_PEERS": "".join(peer_subject_line(p) for p in peers).rstrip("\n"),
                "ORTHANC_DICOM": f"127.0.0.1:{self.ctx.ports[self.edge.dicom_port]}",
                "OUTBOUND_SERVERS": outbound,
            },
        )
        self.write_conf(conf)

    def health(self) -> str | None:
        for host, port in self._listeners():
            if not can_connect(host, port):
                return f"nothing listens on {host}:{port}"
        return None


class DicomTlsA(DicomTlsSidecar):
    edge_class = EdgeA


class DicomTlsB(DicomTlsSidecar):
    edge_class = EdgeB
