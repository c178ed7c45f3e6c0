"""An emulated WAN for benchmarks: two network namespaces joined by a veth pair whose
bandwidth tc `tbf` limits in both directions (no delay emulation: netem is not available
on these machines). Needs root. Nothing listens outside these namespaces."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class WanLink:
    rate_mbit: int = 100
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
            self.run_in(
                ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                "rate", f"{self.rate_mbit}mbit", "burst", "256kbit", "latency", "50ms",
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
