"""The WAN bench's edge side (bench/wan_bench.py runs it inside the edge namespace with
`--drive`, a plan as JSON on stdin, the result as JSON on stdout): our edge Orthanc and a
plain Orthanc sender started next to each other, the same CT sent through each over the
link, and what is measured meanwhile (the link's bytes, the edge's CPU, when central holds
the study).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import CLOCK_TICKS, Group, ProcStat, all_stats, usage
from bench.netns import TxSampler, probe_capacity, utilisation
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.services.orthanc import deep_merge, dicom_modality
from deploy.stack.settings import REPO_ROOT, StackSettings

RELAY_PORT = 8443  # central's TLS endpoint on the link address (bench/relay.py)
RECEIVER_PORT = 18042  # the plain Orthanc receiver, central side
SINK_PORT = 9009  # a discarding sink, central side, for the link probe
EDGE_HTTP, EDGE_DICOM, SENDER_HTTP, SENDER_DICOM = 8042, 4242, 8043, 4243


def edge_cpu(root: int, stats: list[ProcStat]) -> dict[str, float]:
    """CPU seconds of an Orthanc's process tree: the Orthanc process itself (receiving,
    storing, hashing, TLS uploads, its REST API) and its Python worker processes (the
    edge's CharLS compression pool), wrappers (sandbox) counted with Orthanc."""
    out = {"orthanc": 0.0, "workers": 0.0}
    for member in Group("tree", roots=frozenset({root})).members(stats):
        try:
            comm = Path(f"/proc/{member.pid}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        key = "workers" if comm.startswith("python") else "orthanc"
        out[key] += member.cpu_ticks / CLOCK_TICKS
    return out


class Meter:
    """CPU of every process group and the link's bytes over one phase of the bench."""

    def __init__(self, plan: dict[str, Any], edge_pid: int, sender_pid: int) -> None:
        self.plan, self.edge_pid, self.sender_pid = plan, edge_pid, sender_pid
        self.central = [
            Group(name, roots=frozenset(pids)) for name, pids in plan["central_groups"].items()
        ]

    def snapshot(self) -> dict[str, float]:
        stats = all_stats()
        edge = edge_cpu(self.edge_pid, stats)
        sender = edge_cpu(self.sender_pid, stats)
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # storescu, once it has ended
        central = {name: u.cpu_s for name, u in usage(self.central).items()}
        return {
            "edge Orthanc (receive, store, hash, TLS upload)": edge["orthanc"],
            "edge compression workers (CharLS)": edge["workers"],
            "plain Orthanc sender": sender["orthanc"] + sender["workers"],
            "modality client (storescu)": kids.ru_utime + kids.ru_stime,
            "bench harness (polling, sampling)": own.ru_utime + own.ru_stime,
            "TLS connections to central": self.connections(),
            **{f"central: {name}": cpu for name, cpu in central.items()},
        }

    def connections(self) -> float:
        try:
            return float(Path(self.plan["relay_count_file"]).read_text() or 0)
        except FileNotFoundError:
            return 0.0

    def phase(self, work: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """Run work(); returns its result, and the phase's wall time, link use and CPU."""
        sampler = TxSampler(self.plan["edge_if"])
        sampler.start()
        before, t0 = self.snapshot(), time.monotonic()
        result = work()
        wall, after = time.monotonic() - t0, self.snapshot()
        link = utilisation(sampler.stop(), self.plan["link_mbit_s"] * 1e6 / 8)
        cpu = {name: round(after[name] - before[name], 3) for name in after}
        samples = sampler.samples
        return result, {"wall_s": round(wall, 2), "link": link, "cpu_s": cpu, "samples": samples}


def sha256_mb_s(megabytes: int = 64) -> float:
    """SHA-256 speed on this (the edge's) CPU, to price the edge's hashing."""
    data = os.urandom(megabytes << 20)
    t0 = time.process_time()
    hashlib.sha256(data).digest()
    return megabytes * 1.048576 / (time.process_time() - t0)


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
        time.sleep(0.1)
    raise TimeoutError(f"the edge did not deliver within {timeout_s} s")


def wait_settled(edge: httpx.Client, timeout_s: float = 300) -> float:
    """Until the edge has replaced every local copy it compressed (imgcloud.in_place:
    deferred while C-STOREs come); returns how long that took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if edge.get("/imaging-cloud/status").json().get("replaces_pending", 0) == 0:
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    raise TimeoutError(f"the edge still replaces local copies after {timeout_s} s")


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
                **plan.get("edge_settings", {}),  # the variant's (bench.wan_bench --variant)
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
    """Runs inside the edge namespace, on the edge's CPUs (inherited by both Orthancs and
    the modality client): starts both senders, sends, measures."""
    from imgcloud.storage.keyring import KeyRing, write_key_ring

    from deploy.samples.modality import send
    from deploy.samples.studies import make_study

    os.sched_setaffinity(0, set(plan["edge_cpus"]))
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
    auth = ("edge", password)
    edge_url, sender_url = f"http://127.0.0.1:{EDGE_HTTP}", f"http://127.0.0.1:{SENDER_HTTP}"
    try:
        wait_http(f"{edge_url}/imaging-cloud/status", auth)
        wait_http(f"{sender_url}/system", auth)
        wait_http(
            f"http://{central_ip}:{RECEIVER_PORT}/system", ("bench", plan["receiver_password"])
        )
        probed = probe_capacity(central_ip, SINK_PORT, plan["edge_if"])
        plan["link_mbit_s"] = plan["rate_mbit"] or probed  # no tbf: what one stream gets
        meter = Meter(plan, procs[0].pid, procs[1].pid)
        live = make_study(plan["seed"], "CT", instances=plan["slices"])
        backlog = make_study(plan["seed"] + 10, "CT", instances=plan["slices"])
        raw_bytes = write_study(list(live.instances()), home / "live")
        write_study(list(backlog.instances()), home / "backlog")
        uid = live.exam.study_instance_uid
        result: dict[str, Any] = {
            "slices": plan["slices"],
            "study_mb": round(raw_bytes / 1e6, 1),
            "probed_mbit_s": round(probed, 1),
            "link_mbit_s": round(plan["link_mbit_s"], 1),
            "sha256_mb_s": round(sha256_mb_s(), 1),
        }
        receiver_auth = ("bench", plan["receiver_password"])
        receiver_url = f"http://{central_ip}:{RECEIVER_PORT}"

        # Baseline: the modality stores to a plain Orthanc, then a peer store of the
        # uncompressed study (what Orthanc offers to forward a study).
        def peer_store() -> str:
            with httpx.Client(base_url=sender_url, auth=auth, timeout=900) as sender:
                study_id = sender.post("/tools/lookup", content=uid).json()[0]["ID"]
                answer = sender.post(
                    "/peers/receiver/store", json={"Resources": [study_id], "Synchronous": True}
                )
                answer.raise_for_status()
                return str(study_id)

        _, cstore = meter.phase(lambda: storescu(home / "live", SENDER_DICOM, "PLAIN_SENDER"))
        study_id, forward = meter.phase(peer_store)
        with httpx.Client(base_url=receiver_url, auth=receiver_auth, timeout=60) as receiver:
            got = len(receiver.get(f"/studies/{study_id}/instances").json())
        assert got == plan["slices"], f"receiver holds {got} instances"
        result["plain_cstore"], result["plain_forward"] = cstore, forward

        # Ours, live: the edge streams to central while the modality is still sending
        # (compressing each instance on its first read for forwarding); delivered = stable
        # (1 s) and every hash confirmed by central.
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            t0_wall = time.time()
            _, cstore = meter.phase(lambda: storescu(home / "live", EDGE_DICOM, "EDGE_BENCH"))
            t1_wall = time.time()
            delivered, after = meter.phase(lambda: wait_delivered(edge, uid))
            # the local copies replaced after it (their CPU is the live study's too)
            _, settle = meter.phase(lambda: wait_settled(edge))
        result["ours_cstore"], result["ours_after_cstore"] = cstore, after
        result["ours_settle"] = settle
        result["ours_live"] = {
            "bytes_sent_mb": round(delivered["bytes_sent"] / 1e6, 2),
            "queued_after_s": round(delivered["queued_at"] - t0_wall, 2),
            "delivered_after_cstore_s": round(delivered["delivered_at"] - t1_wall, 2),
        }

        # Ours, backlog: the study waits at the edge (forwarding switched off, as during
        # an outage or outside a window), then drains: compare with the peer store above.
        with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
            rules = edge.get("/imaging-cloud/rules").json()
            rules = rules | {"version": rules["version"] + 1, "forwarding_enabled": False}
            edge.put("/imaging-cloud/rules", json=rules).raise_for_status()
            _, cstore = meter.phase(lambda: storescu(home / "backlog", EDGE_DICOM, "EDGE_BENCH"))
            time.sleep(2)  # stable: the whole study is waiting
            rules = rules | {"version": rules["version"] + 1, "forwarding_enabled": True}

            def drain() -> dict[str, Any]:
                edge.put("/imaging-cloud/rules", json=rules).raise_for_status()
                return wait_delivered(edge, backlog.exam.study_instance_uid)

            delivered, drained = meter.phase(drain)
            _, settle = meter.phase(lambda: wait_settled(edge))
        result["backlog_cstore"], result["backlog_drain"] = cstore, drained
        result["backlog_settle"] = settle
        result["backlog_bytes_sent_mb"] = round(delivered["bytes_sent"] / 1e6, 2)
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
        if plan.get("ratios", True):
            result["lossless_ratio"] = lossless_ratios(plan, edge_url, auth, send, make_study)
        return result
    finally:
        stop_processes(procs, wait_s=30)


def lossless_ratios(
    plan: dict[str, Any], edge_url: str, auth: tuple[str, str], send: Any, make_study: Any
) -> dict[str, float]:
    """Original over stored bytes of 20 instances per modality on the generated data (the
    CT is on the edge already, forwarded, so compressed; MR and DX are sent now and
    forwarded, so read compressed once they are delivered)."""
    ratios = {}
    with httpx.Client(base_url=edge_url, auth=auth, timeout=60) as edge:
        for offset, modality in enumerate(("CT", "MR", "DX")):
            study = make_study(plan["seed"] + offset, modality)
            sample = list(study.instances())[:20]
            if modality != "CT":
                sent = send(sample, host="127.0.0.1", port=EDGE_DICOM, called_aet="EDGE_BENCH")
                assert sent.ok, sent.failed
                wait_delivered(edge, study.exam.study_instance_uid, timeout_s=120)
                wait_settled(edge)  # the local copies replaced by the compressed ones
            original = compressed = 0
            for ds in sample:
                original += len(dicom_bytes(ds))
                found = edge.post("/tools/lookup", content=str(ds.SOPInstanceUID)).json()
                instance = next(f["ID"] for f in found if f["Type"] == "Instance")
                compressed += len(edge.get(f"/instances/{instance}/file").content)
            ratios[modality] = round(original / compressed, 2)
    return ratios
