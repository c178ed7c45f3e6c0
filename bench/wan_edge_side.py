"""The WAN bench's edge side (bench/wan_bench.py runs it inside the edge namespace with
`--drive`, a plan as JSON on stdin, the result as JSON on stdout): our edge Orthanc and a
plain Orthanc sender started next to each other, the same CT sent through each over the
link, and what is measured meanwhile (the link's bytes, the edge's CPU, when central holds
the study).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.services.orthanc import deep_merge, dicom_modality
from deploy.stack.settings import REPO_ROOT, StackSettings

RELAY_PORT = 8443  # central's TLS endpoint on the link address (bench/relay.py)
RECEIVER_PORT = 18042  # the plain Orthanc receiver, central side
EDGE_HTTP, EDGE_DICOM, SENDER_HTTP, SENDER_DICOM = 8042, 4242, 8043, 4243


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


def stop_processes(procs: list[subprocess.Popen], wait_s: float) -> None:
    """Terminate them all, then wait `wait_s` for each, killing one that does not end."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def orthanc_configs(
    plan: dict[str, Any], home: Path, keyring: Path, edge_ca: Path, password: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The edge Orthanc's configuration (our plugin, to central over TLS) and the plain
    sender's (no plugin, peer store to the plain receiver over HTTP)."""
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
    return edge_config, sender_config


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
    edge_config, sender_config = orthanc_configs(plan, home, keyring, edge_ca, password)
    central_ip = plan["central_ip"]
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
        stop_processes(procs, wait_s=30)
