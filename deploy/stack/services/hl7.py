"""The HL7 v2 listener (#16): `python -m indexer.hl7 serve`, beside the indexer, on its
database.

Two listeners in one process:
- hl7_mllp: MLLP over TLS on loopback here (in a deployment, the address the hospitals
  reach), server certificate `hl7-listener` of the stack CA; a client must present a
  leaf of the same CA whose CN is `hl7-sender-<CODE>`, which names the one institution
  that connection speaks for. `sender_certificate` issues that leaf for a hospital; the
  CA issues it to that hospital only.
- hl7_mllp_plain: plain MLLP on 127.0.0.1 only, fixed to demo hospital A (tests, demo).
"""

from __future__ import annotations

import socket
from pathlib import Path

from deploy.stack.pki import issue_leaf

from ..context import INSTITUTION_A, StackContext
from .base import Service
from .indexer import Indexer


def sender_certificate(ctx: StackContext, code: str) -> tuple[Path, Path]:
    """(certificate, key) a hospital's RIS presents to the TLS listener."""
    name = f"hl7-sender-{code}"
    return issue_leaf(ctx.pki["ca_cert"].parent, name, name)


class Hl7Listener(Service):
    name = "hl7"
    ports = ("hl7_mllp", "hl7_mllp_plain")
    stop_timeout_s = 30.0

    def __init__(self, ctx: StackContext) -> None:
        super().__init__(ctx)
        self.indexer = Indexer(ctx)

    def prepare(self) -> None:
        self.indexer.ensure_pii_keys()
        issue_leaf(self.ctx.pki["ca_cert"].parent, "hl7-listener", "hl7-listener")

    def env(self) -> dict[str, str]:
        pki = self.ctx.pki["ca_cert"].parent
        return self.indexer.env() | {
            "HL7_HOST": "127.0.0.1",
            "HL7_TLS_PORT": str(self.ctx.ports["hl7_mllp"]),
            "HL7_TLS_CERT": str(pki / "hl7-listener.pem"),
            "HL7_TLS_KEY": str(pki / "hl7-listener.key"),
            "HL7_TLS_CLIENT_CA": str(self.ctx.pki["ca_cert"]),
            "HL7_PLAIN_HOST": "127.0.0.1",
            "HL7_PLAIN_PORT": str(self.ctx.ports["hl7_mllp_plain"]),
            "HL7_PLAIN_INSTITUTION": INSTITUTION_A,
        }

    def argv(self) -> list[str]:
        return [str(self.ctx.settings.venv_bin / "python"), "-m", "indexer.hl7", "serve"]

    def health(self) -> str | None:
        for port in ("hl7_mllp", "hl7_mllp_plain"):
            try:
                with socket.create_connection(("127.0.0.1", self.ctx.ports[port]), timeout=2):
                    pass
            except OSError as exc:
                return f"{port}: {type(exc).__name__}"
        return None


def hl7_services(ctx: StackContext) -> list[Service]:
    return [Hl7Listener(ctx)]
