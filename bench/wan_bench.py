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
its own stack in var/wan-bench.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.netns import WanLink
from deploy.stack.launcher import load_context, read_stack_env
from deploy.stack.pki import issue_leaf
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.services.orthanc import deep_merge, dicom_modality
from deploy.stack.settings import REPO_ROOT, StackSettings

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")
RELAY_PORT = 8443
RECEIVER_PORT = 18042
EDGE_HTTP, EDGE_DICOM, SENDER_HTTP, SENDER_DICOM = 8042, 4242, 8043, 4243


# -- helpers used on the edge side ------------------------------------------------------
class TxSampler(threading.Thread):
    """Samples the link interface's transmitted bytes every 100 ms."""

    def __init__(self, interface: str) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/sys/class/net/{interface}/statistics/tx_bytes")
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), int(self.path.read_text())))
            self._halt.wait(0.1)

    def stop(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join()
        return self.samples


def utilisation(samples: list[tuple[float, int]], link_bytes_per_s: float) -> dict[str, float]:
    """Average and peak rate over the period the link was busy (>20 % of its rate)."""
    busy = [
        (t0, t1, b1 - b0)
        for (t0, b0), (t1, b1) in itertools.pairwise(samples)
        if (b1 - b0) / (t1 - t0) > 0.2 * link_bytes_per_s
    ]
    if not busy:
        return {"busy_s": 0.0, "mean_mbit_s": 0.0, "utilisation": 0.0}
    start, end = busy[0][0], busy[-1][1]
    total = sum(b for *_, b in busy) + sum(
        b1 - b0
        for (t0, b0), (t1, b1) in itertools.pairwise(samples)
        if start <= t0 and t1 <= end and (b1 - b0) / (t1 - t0) <= 0.2 * link_bytes_per_s
    )
    rate = total / (end - start)
    return {
        "busy_s": round(end - start, 2),
        "mean_mbit_s": round(rate * 8 / 1e6, 1),
        "utilisation": round(rate / link_bytes_per_s, 3),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, auth: tuple[str, str], timeout_s: float = 120, **kw: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, auth=auth, timeout=5, **kw).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering after {timeout_s} s")


def dicom_bytes(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def storescu(folder: Path, port: int, called_aet: str) -> float:
    """C-STORE every file of a folder as a modality would (dcmtk, one association)."""
    started = time.monotonic()
    subprocess.run(
        ["storescu", "-aet", "DEMO_CT", "-aec", called_aet, "+sd", "127.0.0.1", str(port),
         str(folder)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return time.monotonic() - started


def write_study(datasets: list[Any], folder: Path) -> int:
    folder.mkdir(parents=True)
    total = 0
    for index, ds in enumerate(datasets):
        data = dicom_bytes(ds)
        (folder / f"{index:05d}.dcm").write_bytes(data)
        total += len(data)
    return total


def wait_delivered(edge: httpx.Client, uid: str, timeout_s: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = edge.post("/tools/lookup", content=uid).json()
        if found:
            state = edge.get(f"/imaging-cloud/studies/{found[0]['ID']}/forwarding")
            if state.status_code == 200 and state.json()["state"] == "delivered":
                return dict(state.json())
        time.sleep(0.05)
    raise TimeoutError(f"the edge did not deliver within {timeout_s} s")


def drive(plan: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the edge namespace: starts both senders, sends, measures."""
    from imgcloud.storage.keyring import KeyRing, write_key_ring

    from deploy.samples.modality import send
    from deploy.samples.studies import make_study

    home = Path(plan["home"])
    shutil.rmtree(home, ignore_errors=True)
    (home / "edge" / "storage").mkdir(parents=True)
    (home / "sender" / "storage").mkdir(parents=True)
    keyring = home / "edge" / "keyring.json"
    edge_ca = home / "edge" / "ca.pem"  # the stack's pki/ is root's own, not the edge's
    edge_ca.write_bytes(Path(plan["ca_cert"]).read_bytes())
    write_key_ring(KeyRing.generate("k1"), keyring)
    password = secrets.token_urlsafe(16)
    central_ip = plan["central_ip"]
    edge_config = deep_merge(
        json.loads((REPO_ROOT / "edge-orthanc" / "orthanc.json").read_text()),
        {
            "Name": "wan-bench-edge",
            "HttpPort": EDGE_HTTP,
            "DicomPort": EDGE_DICOM,
            "DicomAet": "EDGE_BENCH",
            "StableAge": 1,
            "StorageDirectory": str(home / "edge" / "storage"),
            "IndexDirectory": str(home / "edge" / "storage"),
            "RegisteredUsers": {"edge": password},
            "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
            "PythonScript": str(REPO_ROOT / "orthanc-plugins" / "edge_plugin.py"),
            "DicomModalities": {"DEMO_CT": dicom_modality("DEMO_CT", 104)},
            "HttpsCACertificates": str(edge_ca),
            "OrthancPeers": {
                "central": {
                    "Url": f"https://{central_ip}:{RELAY_PORT}/",
                    "Username": plan["central_user"],
                    "Password": plan["central_password"],
                }
            },
            "ImagingCloud": {
                "Institution": "H0001",
                "QueueFile": str(home / "edge" / "forward-queue.sqlite"),
                "ForwardRetryMaxSeconds": 5,
                "Storage": {
                    "KeyRingFile": str(keyring),
                    "Filesystem": {"Root": str(home / "edge" / "objects")},
                },
            },
        },
    )
    sender_config = {
        "Name": "wan-bench-plain-sender",
        "HttpPort": SENDER_HTTP,
        "DicomPort": SENDER_DICOM,
        "DicomAet": "PLAIN_SENDER",
        "StorageDirectory": str(home / "sender" / "storage"),
        "IndexDirectory": str(home / "sender" / "storage"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"edge": password},
        "KeepAlive": True,
        "TcpNoDelay": True,
        "Plugins": [],
        "OrthancPeers": {
            "receiver": {
                "Url": f"http://{central_ip}:{RECEIVER_PORT}/",
                "Username": "bench",
                "Password": plan["receiver_password"],
            }
        },
    }
    settings = StackSettings.from_env(plan["stack_dir"])
    procs = []
    for name, config in (("edge", edge_config), ("sender", sender_config)):
        path = home / name / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (home / f"{name}.log").open("w")
        argv, env = orthanc_command(settings, path, [home])
        procs.append(subprocess.Popen(argv, env=os.environ | env, stdout=log, stderr=log))
    edge_pid = procs[0].pid
    auth = ("edge", password)
    edge_url, sender_url = f"http://127.0.0.1:{EDGE_HTTP}", f"http://127.0.0.1:{SENDER_HTTP}"
    link_bytes = plan["rate_mbit"] * 1e6 / 8
    try:
        wait_http(f"{edge_url}/imaging-cloud/status", auth)
        wait_http(f"{sender_url}/system", auth)
        wait_http(
            f"http://{central_ip}:{RECEIVER_PORT}/system", ("bench", plan["receiver_password"])
        )
        live = make_study(plan["seed"], "CT", instances=plan["slices"])
        backlog = make_study(plan["seed"] + 10, "CT", instances=plan["slices"])
        raw_bytes = write_study(list(live.instances()), home / "live")
        write_study(list(backlog.instances()), home / "backlog")
        uid = live.exam.study_instance_uid
        result: dict[str, Any] = {"slices": plan["slices"], "study_mb": round(raw_bytes / 1e6, 1)}
        receiver_auth = ("bench", plan["receiver_password"])
        receiver_url = f"http://{central_ip}:{RECEIVER_PORT}"

        # Baseline: the modality stores to a plain Orthanc, then a peer store of the
        # uncompressed study (what Orthanc offers to forward a study).
        sampler = TxSampler(plan["edge_if"])
        sampler.start()
        t0 = time.monotonic()
        storescu(home / "live", SENDER_DICOM, "PLAIN_SENDER")
        t1 = time.monotonic()
        with httpx.Client(base_url=sender_url, auth=auth, timeout=900) as sender:
            study_id = sender.post("/tools/lookup", content=uid).json()[0]["ID"]
            answer = sender.post(
                "/peers/receiver/store", json={"Resources": [study_id], "Synchronous": True}
            )
            answer.raise_for_status()
        t2 = time.monotonic()
        with httpx.Client(base_url=receiver_url, auth=receiver_auth, timeout=60) as receiver:
            got = len(receiver.get(f"/studies/{study_id}/instances").json())
        assert got == plan["slices"], f"receiver holds {got} instances"
        result["baseline"] = {
            "cstore_s": round(t1 - t0, 2),
            "after_cstore_s": round(t2 - t1, 2),
            "end_to_end_s": round(t2 - t0, 2),
            **utilisation(sampler.stop(), link_bytes),
        }

        # Ours, live: the edge compresses on arrival and streams to central while the
        # modality is still sending; delivered = stable (1 s) and every hash confirmed.
        cpu0 = cpu_seconds(edge_pid)
        sampler = TxSampler(plan["edge_if"])
        sampler.start()
        t0, t0_wall = time.monotonic(), time.time()
        storescu(home / "live", EDGE_DICOM, "EDGE_BENCH")
        t1, t1_wall = time.monotonic(), time.time()
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            delivered = wait_delivered(edge, uid)
            t2 = time.monotonic()
        cpu1 = cpu_seconds(edge_pid)
        result["ours"] = {
            "cstore_s": round(t1 - t0, 2),
            "after_cstore_s": round(t2 - t1, 2),
            "end_to_end_s": round(t2 - t0, 2),
            "bytes_sent_mb": round(delivered["bytes_sent"] / 1e6, 1),
            "queued_after_s": round(delivered["queued_at"] - t0_wall, 2),
            "delivered_after_cstore_s": round(delivered["delivered_at"] - t1_wall, 2),
            "edge_cpu_ms_per_instance": round((cpu1 - cpu0) * 1000 / plan["slices"], 1),
            **utilisation(sampler.stop(), link_bytes),
        }

        # Ours, backlog: the study waits at the edge (forwarding switched off, as during
        # an outage or outside a window), then drains: compare with the peer store above.
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            rules = edge.get("/imaging-cloud/rules").json()
            rules = rules | {"version": rules["version"] + 1, "forwarding_enabled": False}
            edge.put("/imaging-cloud/rules", json=rules).raise_for_status()
            storescu(home / "backlog", EDGE_DICOM, "EDGE_BENCH")
            time.sleep(2)  # stable: the whole study is waiting
            sampler = TxSampler(plan["edge_if"])
            sampler.start()
            t0 = time.monotonic()
            rules = rules | {"version": rules["version"] + 1, "forwarding_enabled": True}
            edge.put("/imaging-cloud/rules", json=rules).raise_for_status()
            wait_delivered(edge, backlog.exam.study_instance_uid)
            result["ours_backlog"] = {
                "drain_s": round(time.monotonic() - t0, 2),
                **utilisation(sampler.stop(), link_bytes),
            }
        with httpx.Client(
            base_url=f"https://{central_ip}:{RELAY_PORT}",
            auth=(plan["central_user"], plan["central_password"]),
            verify=plan["ca_cert"],
            timeout=60,
        ) as central:
            for study in (live, backlog):
                found = central.post("/tools/lookup", content=study.exam.study_instance_uid)
                central_id = found.json()[0]["ID"]
                got = len(central.get(f"/studies/{central_id}/instances").json())
                assert got == plan["slices"], f"central holds {got} instances"

        # Lossless ratios per modality on the generated data.
        ratios = {}
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            for offset, modality in enumerate(("CT", "MR", "DX")):
                sample = list(make_study(plan["seed"] + offset, modality).instances())[:20]
                if modality != "CT":  # the CT is on the edge already
                    sent = send(sample, host="127.0.0.1", port=EDGE_DICOM, called_aet="EDGE_BENCH")
                    assert sent.ok, sent.failed
                original = compressed = 0
                for ds in sample:
                    original += len(dicom_bytes(ds))
                    found = edge.post("/tools/lookup", content=str(ds.SOPInstanceUID)).json()
                    instance = next(f["ID"] for f in found if f["Type"] == "Instance")
                    compressed += len(edge.get(f"/instances/{instance}/file").content)
                ratios[modality] = round(original / compressed, 2)
        result["lossless_ratio"] = ratios
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- the orchestrator (root namespace) --------------------------------------------------
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
        for proc in helpers:
            proc.terminate()
        for proc in helpers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
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
