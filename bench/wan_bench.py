"""Edge -> central over an emulated WAN: our forwarding against plain Orthanc peer store.

Two network namespaces joined by a veth pair limited with tc tbf (default 100 Mbit/s):
- central side: the whole stack (PostgreSQL, SeaweedFS, central Orthanc with encrypted S3
  storage...), a TLS endpoint on the link address in front of central's REST API, and a
  plain Orthanc receiver for the baseline;
- edge side: our edge Orthanc (JPEG-LS on arrival, SHA-256 confirmed, uploads over TLS)
  and a plain Orthanc sender (no plugin, uncompressed, peer store over plain HTTP).

The same 300-slice CT goes through both, one after the other, over the same link. Printed:
end-to-end time (C-STORE start -> all at the far end), the transfer phase alone, the link
utilisation while sending, the edge's CPU per instance, and lossless ratios per modality.

    sudo .venv/bin/python -m bench.wan_bench [--rate-mbit 100] [--slices 300] [--json]

Needs root (namespaces) and nothing else running on the stack's ports; it starts and stops
its own stack in var/wan-bench. This module is the orchestrator, in the root namespace; what
runs in the edge namespace is bench/wan_edge_side.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
from typing import Any

from bench.netns import WanLink
from bench.wan_edge_side import RECEIVER_PORT, RELAY_PORT, drive, stop_processes
from deploy.stack.launcher import load_context, read_stack_env
from deploy.stack.pki import issue_leaf
from deploy.stack.sandbox import orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def run(rate_mbit: int, slices: int, seed: int) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("wan_bench needs root (network namespaces)")
    state = REPO_ROOT / "var" / "wan-bench"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    stack_dir = state / "stack"
    link = WanLink(rate_mbit=rate_mbit)
    link.create()
    helpers: list[subprocess.Popen] = []
    env = os.environ | {"STACK_DIR": str(stack_dir)}
    try:
        print(f"starting the stack inside {link.central_ns} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [*link.prefix(link.central_ns), PYTHON, "-m", "deploy.stack", "up"],
            env=env, check=True, timeout=900, stdout=sys.stderr, cwd=REPO_ROOT,
        )  # fmt: skip
        settings = StackSettings.from_env(str(stack_dir))
        ctx = load_context(settings)
        stack = read_stack_env(settings.stack_env)
        cert, key = issue_leaf(
            ctx.pki["ca_cert"].parent, "wan-relay", "central-wan", extra_ips=(link.central_ip,)
        )
        helpers.append(
            subprocess.Popen(
                [
                    *link.prefix(link.central_ns),
                    PYTHON,
                    "-m",
                    "bench.relay",
                    "--listen",
                    f"{link.central_ip}:{RELAY_PORT}",
                    "--to",
                    f"127.0.0.1:{ctx.ports['central_http']}",
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                ],
                cwd=REPO_ROOT,
            )
        )
        receiver_password = secrets.token_urlsafe(16)
        receiver_home = state / "receiver"
        receiver_home.mkdir()
        receiver_config = receiver_home / "orthanc.json"
        receiver_config.write_text(
            json.dumps(
                {
                    "Name": "wan-bench-plain-receiver",
                    "HttpPort": RECEIVER_PORT,
                    "DicomServerEnabled": False,
                    "StorageDirectory": str(receiver_home),
                    "IndexDirectory": str(receiver_home),
                    "RemoteAccessAllowed": True,  # on the bench's own namespace link only
                    "AuthenticationEnabled": True,
                    "RegisteredUsers": {"bench": receiver_password},
                    "KeepAlive": True,
                    "TcpNoDelay": True,
                    "Plugins": [],
                }
            )
        )
        log = (state / "receiver.log").open("w")
        argv, env = orthanc_command(settings, receiver_config, [receiver_home])
        helpers.append(
            subprocess.Popen(
                [*link.prefix(link.central_ns), *argv],
                env=os.environ | env,
                stdout=log,
                stderr=log,
            )
        )
        plan = {
            "home": str(state / "edge-side"),
            "central_ip": link.central_ip,
            "edge_if": link.edge_if,
            "rate_mbit": rate_mbit,
            "slices": slices,
            "seed": seed,
            "ca_cert": stack["CA_CERT"],
            "central_user": stack["CENTRAL_ORTHANC_USER"],
            "central_password": stack["CENTRAL_ORTHANC_PASSWORD"],
            "receiver_password": receiver_password,
            "stack_dir": str(stack_dir),
        }
        print(f"measuring inside {link.edge_ns} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [*link.prefix(link.edge_ns), PYTHON, "-m", "bench.wan_bench", "--drive"],
            input=json.dumps(plan), capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the edge-side run failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout)
        result["link_mbit"] = rate_mbit
        return result
    finally:
        stop_processes(helpers, wait_s=20)
        subprocess.run(
            [PYTHON, "-m", "deploy.stack", "down"], env=env, timeout=300, cwd=REPO_ROOT,
            stdout=sys.stderr,
        )  # fmt: skip
        link.destroy()


def report(result: dict[str, Any]) -> str:
    base, ours, drain = result["baseline"], result["ours"], result["ours_backlog"]

    def row(label: str, b: float, o: float) -> str:
        return f"{label:<44}{b:>14.2f}{o:>10.2f}{b / o if o else float('inf'):>8.2f}x"

    lines = [
        f"CT study: {result['slices']} slices, {result['study_mb']} MB uncompressed; link "
        f"{result['link_mbit']} Mbit/s (tc tbf, veth between two network namespaces)",
        f"{'':<44}{'plain Orthanc':>14}{'ours':>10}{'ratio':>9}",
        row(
            "live: modality C-STORE start -> at central (s)",
            base["end_to_end_s"],
            ours["end_to_end_s"],
        ),
        row("  of which C-STORE into the sender (s)", base["cstore_s"], ours["cstore_s"]),
        row("  of which after the C-STORE (s)", base["after_cstore_s"], ours["after_cstore_s"]),
        row("backlog: study waiting -> at central (s)", base["after_cstore_s"], drain["drain_s"]),
        f"{'link while sending: mean Mbit/s (utilisation)':<44}"
        f"{base['mean_mbit_s']:>8.1f} ({base['utilisation']:.0%})"
        f"  live {ours['mean_mbit_s']:.1f} ({ours['utilisation']:.0%}),"
        f" backlog {drain['mean_mbit_s']:.1f} ({drain['utilisation']:.0%})",
        f"bytes on the wire (ours, compressed): {ours['bytes_sent_mb']} MB",
        f"ours live: queued {ours['queued_after_s']} s after the first C-STORE began, "
        f"delivered and confirmed {ours['delivered_after_cstore_s']} s after the last "
        "(StableAge 1 s)",
        f"edge CPU per instance (ours, compress + hash + TLS upload): "
        f"{ours['edge_cpu_ms_per_instance']} ms",
        "lossless ratio (JPEG-LS) on generated data: "
        + ", ".join(f"{m} {r}:1" for m, r in result["lossless_ratio"].items()),
        "(plain Orthanc: C-STORE into a plain Orthanc, then peer store of the uncompressed "
        "study over plain HTTP; ours: edge plugin, TLS, SHA-256 confirmed at central)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wan_bench", description=__doc__)
    parser.add_argument("--rate-mbit", type=int, default=100)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=8100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(json.load(sys.stdin))))
        return
    result = run(args.rate_mbit, args.slices, args.seed)
    print(json.dumps(result, indent=1) if args.json else report(result))


if __name__ == "__main__":
    main()
