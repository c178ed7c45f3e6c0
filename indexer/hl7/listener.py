"""The MLLP listener: asyncio streams with explicit framing (0x0B message 0x1C 0x0D), one
message at a time per connection (original-mode acknowledgement), the database work in a
bounded thread pool.

Why not hl7apy.mllp.MLLPServer: it is a socketserver.ThreadingTCPServer (a thread per
connection, no limit), without TLS, read timeouts or a message size limit, and it hands
the handler the text already decoded; each of those is needed here.

Who is trusted, and why (for the review):
- TLS port: the client must present a certificate issued by `tls_client_ca` (the stack's
  CA; TLS 1.2+). Its subject CN must be `hl7-sender-<CODE>`: <CODE> is the one institution
  every message on that connection speaks for. The CA issues such a leaf to that hospital
  only (deploy/stack/services/hl7.py); any other leaf of the CA (a server, an edge) has
  another CN and is refused before a byte of HL7 is read.
- Plain port: loopback only (the settings refuse anything else), for tests and the
  demo; the institution is fixed by configuration for the port.
The message itself chooses nothing: MSH-4 may only repeat the institution (handlers.py).

Limits: a frame larger than max_message_bytes is answered AR and the connection closed;
an idle connection is closed after idle_timeout_s; a frame must complete within
frame_timeout_s; the database work of a message is given handle_timeout_s, after which
the sender is answered AE (send again: the journal replays the first answer if the work
did finish); at most max_connections at once (the next ones are closed at once).
Bytes outside a frame, a frame without its start byte, or with a second start byte, are
answered AR each, and the connection goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .ack import ack
from .config import Hl7Settings
from .errors import APPLICATION_ERROR, SEGMENT_SEQUENCE, Hl7Error, Rejected
from .handlers import Intake, Result, Sender

log = logging.getLogger(__name__)
START, END = b"\x0b", b"\x1c\x0d"
SENDER_CN = re.compile(r"^hl7-sender-([A-Z0-9]{2,16})$")
HANDSHAKE_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0


def institution_of(peercert: Mapping[str, Any] | None) -> str | None:
    """The institution a verified client certificate names (CN hl7-sender-<CODE>)."""
    if not peercert:
        return None
    names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    found = SENDER_CN.match(names[0]) if len(names) == 1 else None
    return found.group(1) if found else None


def server_tls(settings: Hl7Settings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert settings.tls_cert and settings.tls_key and settings.tls_client_ca
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    context.load_verify_locations(settings.tls_client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def unframe(frame: bytes) -> bytes | None:
    """The message between 0x0B and 0x1C 0x0D (`frame` ends with the end bytes); None if
    the framing is wrong. Line breaks before the start byte are tolerated."""
    body = frame[: -len(END)].lstrip(b"\r\n")
    if not body.startswith(START) or START in body[1:]:
        return None
    return body[1:]


class Listener:
    def __init__(self, intake: Intake, settings: Hl7Settings) -> None:
        self.intake = intake
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="hl7")
        self.open = 0
        self.servers: list[asyncio.Server] = []

    async def start(self) -> None:
        s = self.settings
        limit = s.max_message_bytes + 16
        if s.tls_port is not None:
            tls = server_tls(s)
            server = await asyncio.start_server(
                self._tls_connection, s.host, s.tls_port, ssl=tls, limit=limit,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            )  # fmt: skip
            self.servers.append(server)
        if s.plain_port is not None:
            fixed = s.plain_institution
            assert fixed is not None

            async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._connection(reader, writer, fixed, "plain")

            self.servers.append(
                await asyncio.start_server(plain, s.plain_host, s.plain_port, limit=limit)
            )
        log.info("hl7 listening: tls port %s, plain port %s", s.tls_port, s.plain_port)

    async def serve_until_stopped(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.close()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def _tls_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        code = institution_of(writer.get_extra_info("peercert"))
        if code is None:
            log.warning("hl7 TLS client without an hl7-sender certificate: closed")
            writer.close()
            return
        await self._connection(reader, writer, code, "tls")

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, channel: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        if self.open >= self.settings.max_connections:
            log.warning("hl7 connection from %s refused: %d open", source, self.open)
            writer.close()
            return
        self.open += 1
        sender = Sender(code, source, channel)
        try:
            await self._messages(reader, writer, sender)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # the peer went away or stalled: the connection ends
        finally:
            self.open -= 1
            writer.close()

    async def _messages(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: Sender
    ) -> None:
        s = self.settings
        while True:
            try:
                first = await asyncio.wait_for(reader.readexactly(1), s.idle_timeout_s)
                rest = await asyncio.wait_for(reader.readuntil(END), s.frame_timeout_s)
            except asyncio.LimitOverrunError:
                rule = f"a message is at most {s.max_message_bytes} bytes"
                await self._send(writer, self._framing(rule, sender))
                return
            except asyncio.IncompleteReadError:
                return  # closed, maybe inside a frame: nothing to answer
            message = unframe(first + rest)
            if message is None:
                rule = "MLLP framing: 0x0B, the message, 0x1C 0x0D"
                result = self._framing(rule, sender)
            else:
                result = await self._handle(message, sender)
            await self._send(writer, result)

    async def _handle(self, message: bytes, sender: Sender) -> Result:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.pool, self.intake.handle, message, sender)
        try:
            return await asyncio.wait_for(work, self.settings.handle_timeout_s)
        except TimeoutError:
            log.error("hl7 message from %s took too long: answered AE", sender.institution)
            late = Hl7Error("", APPLICATION_ERROR, "timed out: send the message again")
            return Result(ack("AE", errors=[late]).encode(), "AE")
        except Exception as exc:  # the intake answers everything; this is its last resort
            log.error("hl7 message from %s failed: %s", sender.institution, type(exc).__name__)
            failed = Hl7Error("", APPLICATION_ERROR, "internal error: send the message again")
            return Result(ack("AE", errors=[failed]).encode(), "AE")

    def _framing(self, rule: str, sender: Sender) -> Result:
        return self.intake.refuse_unparsed(Rejected("", SEGMENT_SEQUENCE, rule), sender)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, result: Result) -> None:
        writer.write(START + result.ack + END)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def run(intake_factory: Callable[[], Intake], settings: Hl7Settings) -> None:
    asyncio.run(Listener(intake_factory(), settings).serve_until_stopped())
