"""A TCP relay for benchmarks, optionally terminating TLS: it gives a service that listens
on a namespace's loopback an address on the emulated WAN link. With --discard instead of
--to it is a sink that reads and drops what it is sent (bench.netns.probe_capacity).

    python -m bench.relay --listen 10.201.0.1:8443 --to 127.0.0.1:8042 --cert C --key K
    python -m bench.relay --listen 10.201.0.1:9000 --discard
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from pathlib import Path

CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 20):
            pass
    writer.close()


async def serve(
    listen: tuple[str, int],
    to: tuple[str, int] | None,
    tls: ssl.SSLContext | None,
    count_file: Path | None = None,
) -> None:
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if count_file is not None:  # connections (TLS handshakes) so far, for the bench
            count_file.write_text(str(accepted))
        if to is None:
            await _discard(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*to), 10)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_server(handle, *listen, ssl=tls)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--listen", required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to")
    target.add_argument("--discard", action="store_true")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--count-file", type=Path, help="the connections accepted so far")
    args = parser.parse_args()
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    to = None if args.discard else _address(args.to)
    asyncio.run(serve(_address(args.listen), to, tls, args.count_file))


if __name__ == "__main__":
    main()
