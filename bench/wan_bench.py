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
from deploy.stack.services.orthanc import ORTHANC_BIN, PLUGIN_DIR, deep_merge
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
            "DicomModalities": {"DEMO_CT": ["DEMO_CT", "127.0.0.1", 104]},
            "HttpsCACertificates": plan["ca_cert"],
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
    site = REPO_ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
    env = os.environ | {
        "LD_PRELOAD": plan["bind_shim"],
        "PYTHONPATH": f"{REPO_ROOT / 'orthanc-plugins'}:{site}",
    }
    procs = []
    for name, config in (("edge", edge_config), ("sender", sender_config)):
        path = home / name / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (home / f"{name}.log").open("w")
        procs.append(
            subprocess.Popen([str(ORTHANC_BIN), str(path)], env=env, stdout=log, stderr=log)
        )
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
        study = make_study(plan["seed"], "CT", instances=plan["slices"])
        datasets = list(study.instances())
        raw_bytes = sum(len(dicom_bytes(d)) for d in datasets)
        uid = study.exam.study_instance_uid
        result: dict[str, Any] = {"slices": len(datasets), "study_mb": round(raw_bytes / 1e6, 1)}

        # Baseline: plain Orthanc, C-STORE then peer store of the uncompressed study.
        sampler = TxSampler(plan["edge_if"])
        sampler.start()
        t0 = time.monotonic()
        stored = send(datasets, host="127.0.0.1", port=SENDER_DICOM, called_aet="PLAIN_SENDER")
        t1 = time.monotonic()
        assert stored.ok, stored.failed
        with httpx.Client(base_url=sender_url, auth=auth, timeout=900) as sender:
            study_id = sender.post("/tools/lookup", content=uid).json()[0]["ID"]
            answer = sender.post(
                "/peers/receiver/store", json={"Resources": [study_id], "Synchronous": True}
            )
            answer.raise_for_status()
        t2 = time.monotonic()
        with httpx.Client(
            base_url=f"http://{central_ip}:{RECEIVER_PORT}",
            auth=("bench", plan["receiver_password"]),
            timeout=60,
        ) as receiver:
            got = len(receiver.get(f"/studies/{study_id}/instances").json())
        assert got == len(datasets), f"receiver holds {got} instances"
        result["baseline"] = {
            "cstore_s": round(t1 - t0, 2),
            "transfer_s": round(t2 - t1, 2),
            "end_to_end_s": round(t2 - t0, 2),
            **utilisation(sampler.stop(), link_bytes),
        }

        # Ours: C-STORE to the edge (compressed on arrival), forwarded once stable (1 s),
        # over TLS, every instance confirmed by hash at central.
        cpu0 = cpu_seconds(edge_pid)
        sampler = TxSampler(plan["edge_if"])
        sampler.start()
        t0 = time.monotonic()
        stored = send(datasets, host="127.0.0.1", port=EDGE_DICOM, called_aet="EDGE_BENCH")
        t1, t1_wall = time.monotonic(), time.time()
        assert stored.ok, stored.failed
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            edge_id = edge.post("/tools/lookup", content=uid).json()[0]["ID"]
            while True:
                state = edge.get(f"/imaging-cloud/studies/{edge_id}/forwarding")
                if state.status_code == 200 and state.json()["state"] == "delivered":
                    break
                if time.monotonic() - t0 > 900:
                    raise TimeoutError("the edge did not deliver within 900 s")
                time.sleep(0.05)
            t2 = time.monotonic()
            delivered = state.json()
        cpu1 = cpu_seconds(edge_pid)
        result["ours"] = {
            "cstore_s": round(t1 - t0, 2),
            "transfer_s": round(t2 - t1, 2),
            "end_to_end_s": round(t2 - t0, 2),
            "bytes_sent_mb": round(delivered["bytes_sent"] / 1e6, 1),
            # of the transfer phase: waiting for the study to be stable (StableAge 1 s),
            # then reading, hashing, uploading and having central confirm every instance
            "stable_wait_s": round(delivered["queued_at"] - t1_wall, 2),
            "send_and_confirm_s": round(delivered["delivered_at"] - delivered["queued_at"], 2),
            "edge_cpu_ms_per_instance": round((cpu1 - cpu0) * 1000 / len(datasets), 1),
            **utilisation(sampler.stop(), link_bytes),
        }
        with httpx.Client(
            base_url=f"https://{central_ip}:{RELAY_PORT}",
            auth=(plan["central_user"], plan["central_password"]),
            verify=plan["ca_cert"],
            timeout=60,
        ) as central:
            central_id = central.post("/tools/lookup", content=uid).json()[0]["ID"]
            got = len(central.get(f"/studies/{central_id}/instances").json())
        assert got == len(datasets), f"central holds {got} instances"

        # Lossless ratios per modality on the generated data.
        ratios = {}
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            for modality, seed in (
                ("CT", plan["seed"]),
                ("MR", plan["seed"] + 1),
                ("DX", plan["seed"] + 2),
            ):
                sample = list(make_study(seed, modality).instances())[:20]
                if modality != "CT":
                    assert send(
                        sample, host="127.0.0.1", port=EDGE_DICOM, called_aet="EDGE_BENCH"
                    ).ok
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
        helpers.append(
            subprocess.Popen(
                [*link.prefix(link.central_ns), str(ORTHANC_BIN), str(receiver_config)],
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
            "bind_shim": str(settings.bind_shim),
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
    base, ours = result["baseline"], result["ours"]
    lines = [
        f"300-slice CT? {result['slices']} slices, {result['study_mb']} MB uncompressed; "
        f"link {result['link_mbit']} Mbit/s (tc tbf, veth between namespaces)",
        f"{'':<28}{'plain peer store':>18}{'ours':>12}{'ratio':>9}",
    ]
    for key, label in (
        ("end_to_end_s", "end to end (s)"),
        ("transfer_s", "after C-STORE done (s)"),
        ("cstore_s", "C-STORE into sender (s)"),
    ):
        ratio = base[key] / ours[key] if ours[key] else float("inf")
        lines.append(f"{label:<28}{base[key]:>18.2f}{ours[key]:>12.2f}{ratio:>8.2f}x")
    lines.append(
        f"{'link busy: mean Mbit/s':<28}{base['mean_mbit_s']:>18.1f}{ours['mean_mbit_s']:>12.1f}"
    )
    lines.append(
        f"{'link utilisation':<28}{base['utilisation']:>18.0%}{ours['utilisation']:>12.0%}"
    )
    lines.append(f"bytes on the wire (ours, compressed): {ours['bytes_sent_mb']} MB")
    lines.append(
        f"ours after C-STORE: {ours['stable_wait_s']} s until stable (StableAge 1 s), "
        f"{ours['send_and_confirm_s']} s to send and have central confirm every hash"
    )
    lines.append(f"edge CPU per instance (ours): {ours['edge_cpu_ms_per_instance']} ms")
    ratios = ", ".join(f"{m} {r}:1" for m, r in result["lossless_ratio"].items())
    lines.append(f"lossless ratio (JPEG-LS) on generated data: {ratios}")
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
