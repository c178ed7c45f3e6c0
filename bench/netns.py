"""An emulated WAN for benchmarks: two network namespaces joined by a veth pair whose
bandwidth tc `tbf` limits in both directions (no delay emulation: netem is not available
on these machines); rate 0 leaves the veth unlimited. Needs root. Nothing listens outside
these namespaces. Also what the benchmark measures on the link: its transmitted bytes, the
utilisation while busy, and what one plain TCP stream gets through it."""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class WanLink:
    rate_mbit: int = 100  # 0: no tbf, the veth's own speed
    central_ns: str = "imgc-wan-c"
    edge_ns: str = "imgc-wan-e"
    central_if: str = "imgc-wc"
    edge_if: str = "imgc-we"
    central_ip: str = "10.201.0.1"
    edge_ip: str = "10.201.0.2"

    def create(self) -> None:
        self.destroy()
        _run("ip", "netns", "add", self.central_ns)
        _run("ip", "netns", "add", self.edge_ns)
        _run("ip", "link", "add", self.edge_if, "type", "veth", "peer", "name", self.central_if)
        for ns, dev, ip in (
            (self.central_ns, self.central_if, self.central_ip),
            (self.edge_ns, self.edge_if, self.edge_ip),
        ):
            _run("ip", "link", "set", dev, "netns", ns)
            self.run_in(ns, "ip", "addr", "add", f"{ip}/30", "dev", dev)
            self.run_in(ns, "ip", "link", "set", dev, "up")
            self.run_in(ns, "ip", "link", "set", "lo", "up")
        self.set_rate(self.rate_mbit)

    def set_rate(self, rate_mbit: int) -> None:
        """Limit both directions to `rate_mbit` with tbf; 0 removes the limit."""
        for ns, dev in ((self.central_ns, self.central_if), (self.edge_ns, self.edge_if)):
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
                timeout=30,
            )  # fmt: skip  (none yet: fails, and that is fine)
            if rate_mbit > 0:
                self.run_in(
                    ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", f"{rate_mbit}mbit", "burst", "256kbit", "latency", "50ms",
                )  # fmt: skip

    def destroy(self) -> None:
        for ns in (self.central_ns, self.edge_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def run_in(self, ns: str, *argv: str) -> None:
        _run("ip", "netns", "exec", ns, *argv)

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def __enter__(self) -> WanLink:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def tx_bytes(interface: str) -> int:
    return int(Path(f"/sys/class/net/{interface}/statistics/tx_bytes").read_text())


class TxSampler(threading.Thread):
    """Samples an interface's transmitted bytes (headers included) every 100 ms."""

    def __init__(self, interface: str) -> None:
        super().__init__(daemon=True)
        self.interface = interface
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), tx_bytes(self.interface)))
            self._halt.wait(0.1)

    def stop(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join()
        self.samples.append((time.monotonic(), tx_bytes(self.interface)))
        return self.samples


def utilisation(samples: list[tuple[float, int]], link_bytes_per_s: float) -> dict[str, float]:
    """Bytes on the wire over the whole sampled period, and the mean rate over the period
    the link was busy: from the first to the last 100 ms above 20 % of the link's rate, or
    of the period's peak if lower (without tbf the link is far faster than any sender)."""
    wire = samples[-1][1] - samples[0][1] if samples else 0
    pairs = [(t0, b0, t1, b1) for (t0, b0), (t1, b1) in itertools.pairwise(samples) if t1 > t0]
    peak = max(((b1 - b0) / (t1 - t0) for t0, b0, t1, b1 in pairs), default=0.0)
    threshold = 0.2 * min(link_bytes_per_s, peak)
    busy = [(t0, t1) for t0, b0, t1, b1 in pairs if b1 > b0 and (b1 - b0) / (t1 - t0) > threshold]
    out = {"wire_mb": round(wire / 1e6, 2), "busy_s": 0.0, "mean_mbit_s": 0.0, "utilisation": 0.0}
    if not busy:
        return out
    start, end = busy[0][0], busy[-1][1]
    total = sum(b1 - b0 for t0, b0, t1, b1 in pairs if start <= t0 and t1 <= end)
    rate = total / (end - start)
    out |= {
        "busy_s": round(end - start, 2),
        "mean_mbit_s": round(rate * 8 / 1e6, 1),
        "utilisation": round(rate / link_bytes_per_s, 3),
    }
    return out


def probe_capacity(host: str, port: int, interface: str, seconds: float = 3.0) -> float:
    """Mbit/s that one plain TCP stream puts on the wire (1 MiB writes to a discarding
    sink, bench/relay.py --discard), headers included: the link's rate as the benches
    see it, with tbf or without."""
    chunk = bytes(1 << 20)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(chunk)  # past slow start before the clock runs
        t0, b0 = time.monotonic(), tx_bytes(interface)
        while time.monotonic() - t0 < seconds:
            sock.sendall(chunk)
        t1, b1 = time.monotonic(), tx_bytes(interface)
    return (b1 - b0) * 8 / 1e6 / (t1 - t0)
