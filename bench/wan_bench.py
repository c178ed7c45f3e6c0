"""Edge -> central over an emulated WAN: our forwarding against plain Orthanc peer store.

Two network namespaces joined by a veth pair limited with tc tbf (default 100 Mbit/s;
--rate-mbit 0: no tbf, the veth's own speed):
- central side: the whole stack (PostgreSQL, SeaweedFS, central Orthanc with encrypted S3
  storage...), a TLS endpoint on the link address in front of central's REST API, a plain
  Orthanc receiver for the baseline, and a discarding sink for the link probe;
- edge side: our edge Orthanc (CharLS JPEG-LS before forwarding, SHA-256 confirmed, uploads
  over TLS), a plain Orthanc sender (no plugin, uncompressed, peer store over plain HTTP),
  and the modality client (dcmtk storescu) that sends into either.

Layouts (--layout fair|shared|both): "fair" pins every process of the edge namespace to
one CPU (--edge-cpu, default 0) and every process of the central namespace to the others;
"shared" lets everything use every CPU. The modality client is on the edge's CPU: it is a
load client that would ideally have a CPU of its own, but with two there is none to spare,
and on central's it would take CPU from the receiving side the live run measures; both
senders pay it alike, and its CPU is printed.

The same CT goes through both senders, one after the other, over the same link. Printed per
layout: C-STORE into the edge, live end-to-end (C-STORE start -> study at central), the
backlog drain against the peer store and against the compressed-bytes floor, the link's
utilisation while sending, and CPU per instance of every process group in each phase.

    sudo .venv/bin/python -m bench.wan_bench [--rate-mbit 100[,0]] [--layout both] [--json]
        [--variant NAME='{"ReplaceAfterIdleSeconds": 0}' ...] [--repeat N]

Each --variant is a fresh edge with these ImagingCloud settings over the default ones, run
in turn for each rate and layout (with --repeat, the variants alternate N times), each
beside its own plain baseline: before/after figures from one invocation.

Needs root (namespaces) and nothing else running on the stack's ports; it starts and stops
its own stack in var/wan-bench. This module is the orchestrator, in the root namespace; what
runs in the edge namespace is bench/wan_edge_side.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
from typing import Any

from bench.cpu import threads
from bench.netns import WanLink
from bench.wan_edge_side import RECEIVER_PORT, RELAY_PORT, SINK_PORT, drive, stop_processes
from bench.wan_report import report
from deploy.stack.launcher import load_context, read_stack_env, services
from deploy.stack.pki import issue_leaf
from deploy.stack.sandbox import orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")
ALL_CPUS = frozenset(os.sched_getaffinity(0))


def namespace_pids(ns: str) -> list[int]:
    """Every process in network namespace `ns` (as `ip netns` names it)."""
    inode = os.stat(f"/run/netns/{ns}").st_ino
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return out


def pin(pids: list[int], cpus: set[int]) -> int:
    """Every thread of these processes on `cpus` (threads and processes they start later
    inherit it); returns the thread count."""
    count = 0
    for tid in (tid for pid in pids for tid in threads(pid)):
        try:
            os.sched_setaffinity(tid, cpus)
            count += 1
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile
    return count


def layout_cpus(layout: str, edge_cpu: int) -> tuple[set[int], set[int]]:
    """(edge side's CPUs, central side's CPUs) of a layout."""
    if layout == "shared":
        return set(ALL_CPUS), set(ALL_CPUS)
    if edge_cpu not in ALL_CPUS or len(ALL_CPUS) < 2:
        raise SystemExit(f"the fair layout needs CPU {edge_cpu} and another, have {ALL_CPUS}")
    return {edge_cpu}, set(ALL_CPUS - {edge_cpu})


def central_groups(ctx, relay: int, receiver: list[int], sink: int) -> dict[str, list[int]]:
    """The central side's process groups by root PID, as the edge side prices them."""
    groups: dict[str, list[int]] = {
        "central Orthanc": [],
        "PostgreSQL": [],
        "SeaweedFS": [],
        "other stack services": [],
    }
    for svc in services(ctx):
        if (pid := svc.pid()) is None:
            continue
        name = svc.name
        key = (
            "central Orthanc"
            if name.startswith("central")
            else {"postgres": "PostgreSQL", "seaweedfs": "SeaweedFS"}.get(
                name, "other stack services"
            )
        )
        groups[key].append(pid)
    return groups | {
        "TLS relay": [relay],
        "plain receiver (and its relay)": receiver,
        "link sink": [sink],
    }


def run(
    rates: list[int],
    slices: int,
    seed: int,
    layouts: list[str],
    edge_cpu: int,
    variants: list[tuple[str, dict[str, Any]]],
) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("wan_bench needs root (network namespaces)")
    state = REPO_ROOT / "var" / "wan-bench"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    stack_dir = state / "stack"
    link = WanLink(rate_mbit=rates[0])
    link.create()
    helpers: list[subprocess.Popen] = []
    stack_environ = os.environ | {"STACK_DIR": str(stack_dir)}
    try:
        print(f"starting the stack inside {link.central_ns} ...", file=sys.stderr, flush=True)
        subprocess.run(
            [*link.prefix(link.central_ns), PYTHON, "-m", "deploy.stack", "up"],
            env=stack_environ, check=True, timeout=900, stdout=sys.stderr, cwd=REPO_ROOT,
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
                    "--count-file",
                    str(state / "relay-connections"),
                ],
                cwd=REPO_ROOT,
            )
        )
        helpers.append(
            subprocess.Popen(
                [*link.prefix(link.central_ns), PYTHON, "-m", "bench.relay", "--listen",
                 f"{link.central_ip}:{SINK_PORT}", "--discard"],
                cwd=REPO_ROOT,
            )
        )  # fmt: skip
        receiver_password = secrets.token_urlsafe(16)
        receiver_home = state / "receiver"
        receiver_home.mkdir()
        receiver_config = receiver_home / "orthanc.json"
        receiver_config.write_text(
            json.dumps(
                {
                    "Name": "wan-bench-plain-receiver",
                    "HttpPort": RECEIVER_PORT + 1,  # on loopback (bindlo), relayed below
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
        # not `stack_environ`: the final `down` needs that one (it was once overwritten
        # here, and the down went to the default stack in var/, leaving this one running)
        argv, receiver_env = orthanc_command(settings, receiver_config, [receiver_home])
        helpers.append(
            subprocess.Popen(
                [*link.prefix(link.central_ns), *argv],
                env=os.environ | receiver_env,
                stdout=log,
                stderr=log,
            )
        )
        # Orthanc listens on loopback only (the bindlo shim): a plain TCP relay gives the
        # receiver the link address, as the TLS relay does central (both paths one hop).
        helpers.append(
            subprocess.Popen(
                [*link.prefix(link.central_ns), PYTHON, "-m", "bench.relay", "--listen",
                 f"{link.central_ip}:{RECEIVER_PORT}", "--to", f"127.0.0.1:{RECEIVER_PORT + 1}"],
                cwd=REPO_ROOT,
            )
        )  # fmt: skip
        relay, sink, receiver, receiver_relay = (h.pid for h in helpers)
        groups = central_groups(ctx, relay, [receiver, receiver_relay], sink)
        result: dict[str, Any] = {"runs": []}
        plans = itertools.product(rates, layouts, variants)
        for index, (rate_mbit, layout, (variant, edge_settings)) in enumerate(plans):
            link.set_rate(rate_mbit)
            edge_cpus, central_cpus = layout_cpus(layout, edge_cpu)
            threads = pin(namespace_pids(link.central_ns), central_cpus)
            print(
                f"{f'{rate_mbit} Mbit/s' if rate_mbit else 'no tbf'}, layout {layout}: "
                "edge side on CPUs "
                f"{sorted(edge_cpus)}, central side ({threads} threads) on "
                f"{sorted(central_cpus)}; edge {variant}; measuring in {link.edge_ns}",
                file=sys.stderr,
                flush=True,
            )
            plan = {
                "home": str(state / f"edge-side-{index}"),
                "central_ip": link.central_ip,
                "edge_if": link.edge_if,
                "rate_mbit": rate_mbit,
                "slices": slices,
                "seed": seed + 1000 * index,  # new studies: central holds the earlier ones
                "edge_cpus": sorted(edge_cpus),
                "central_groups": groups,
                "ratios": index == 0,
                "relay_count_file": str(state / "relay-connections"),
                "ca_cert": stack["CA_CERT"],
                "central_user": stack["CENTRAL_ORTHANC_USER"],
                "central_password": stack["CENTRAL_ORTHANC_PASSWORD"],
                "receiver_password": receiver_password,
                "stack_dir": str(stack_dir),
                "edge_settings": edge_settings,
            }
            done = subprocess.run(
                [*link.prefix(link.edge_ns), PYTHON, "-m", "bench.wan_bench", "--drive"],
                input=json.dumps(plan), capture_output=True, text=True, timeout=1800,
                cwd=REPO_ROOT,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"the edge-side run ({layout}) failed:\n{done.stderr[-3000:]}")
            one = json.loads(done.stdout)
            one["edge_cpus"], one["central_cpus"] = sorted(edge_cpus), sorted(central_cpus)
            one |= {"layout": layout, "rate_mbit": rate_mbit}
            result["runs"].append(one | {"variant": variant, "edge_settings": edge_settings})
        return result
    finally:
        stop_processes(helpers, wait_s=20)
        subprocess.run(
            [PYTHON, "-m", "deploy.stack", "down"], env=stack_environ, timeout=300,
            cwd=REPO_ROOT,
            stdout=sys.stderr,
        )  # fmt: skip
        link.destroy()


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """NAME=JSON: a name for the report and ImagingCloud settings for the edge."""
    name, _, settings = text.partition("=")
    parsed = json.loads(settings or "{}")
    if not name or not isinstance(parsed, dict):
        raise SystemExit(f"--variant {text!r}: NAME=JSON, the JSON an object")
    return name, parsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wan_bench", description=__doc__)
    parser.add_argument(
        "--rate-mbit", default="100", help="link rate(s), comma-separated; 0: no tbf"
    )
    parser.add_argument("--layout", choices=("fair", "shared", "both"), default="both")
    parser.add_argument("--edge-cpu", type=int, default=0, help="the edge side's CPU (fair)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=8100)
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=JSON",
        help="an edge with these ImagingCloud settings (repeatable; default: as configured)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="alternate the variants N times")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", metavar="JSON", help="print the report of a saved result")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(json.load(sys.stdin))))
        return
    if args.report:
        print(report(json.loads(open(args.report).read())))
        return
    layouts = ["fair", "shared"] if args.layout == "both" else [args.layout]
    rates = [int(r) for r in args.rate_mbit.split(",")]
    variants = [parse_variant(v) for v in args.variant or ["default={}"]] * args.repeat
    result = run(rates, args.slices, args.seed, layouts, args.edge_cpu, variants)
    (REPO_ROOT / "var" / "wan-bench" / "result.json").write_text(json.dumps(result))
    print(json.dumps(result, indent=1) if args.json else report(result))


if __name__ == "__main__":
    main()
