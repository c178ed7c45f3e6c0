"""Where the C-STORE into the edge spends its time (#13): a CT study C-STOREd by dcmtk's
`storescu` into a plain Orthanc and into our edge (forwarding off, so only intake runs),
one after the other on one core, each fresh; wall time and CPU per instance of each
Orthanc (and of the edge's CharLS workers), optionally a py-spy profile of the edge.

    flock /tmp/imgcloud-stack.lock .venv/bin/python -m bench.cstore_profile \
        [--slices 300] [--cpu 0] [--variant NAME=JSON ...] [--pieces filter,storage,...]
        [--pyspy /tmp/pyspy/bin/py-spy] [--attach "strace -f -c -o {home}/s.txt -p {pid}"]

A variant is a fresh edge with these `ImagingCloud` settings merged in (e.g.
`keep={"Compression": "keep"}`); a piece is plain Orthanc plus one piece of ours (PIECES:
the C-STORE filter, the encrypted storage area, a REST call per arrival...). No central,
no network namespace: the edge's peer is a closed local port and its rules switch
forwarding off before the study comes, as the WAN bench's backlog phase does. py-spy
(--gil) samples only threads holding the GIL (the plugin's callbacks, the storage area,
the workers): its split is of the Python part; the rest of the Orthanc process's CPU is
Orthanc's own C++ (DCMTK, SQLite, HTTP).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cpu import all_stats
from bench.wan_edge_side import edge_cpu, stop_processes, wait_http, write_study
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.services.orthanc import deep_merge, dicom_modality
from deploy.stack.settings import REPO_ROOT, StackSettings

HTTP_PORT, DICOM_PORT = 18142, 14342
AET = "EDGE_PROFILE"
PYSPY_RATE = 500


def edge_config(home: Path, keyring: Path, password: str, extra: dict[str, Any]) -> dict:
    return deep_merge(
        json.loads((REPO_ROOT / "edge-orthanc" / "orthanc.json").read_text()),
        {
            "Name": "cstore-profile-edge",
            "HttpPort": HTTP_PORT,
            "DicomPort": DICOM_PORT,
            "DicomAet": AET,
            "StableAge": 1,
            "StorageDirectory": str(home / "storage"),
            "IndexDirectory": str(home / "storage"),
            "RegisteredUsers": {"edge": password},
            "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
            "PythonScript": str(REPO_ROOT / "orthanc-plugins" / "edge_plugin.py"),
            "DicomModalities": {"DEMO_CT": dicom_modality("DEMO_CT", 104)},
            "OrthancPeers": {
                "central": {"Url": "http://127.0.0.1:9/", "Username": "x", "Password": "x"}
            },
            "ImagingCloud": {
                "Institution": "H0001",
                "QueueFile": str(home / "forward-queue.sqlite"),
                "Storage": {
                    "KeyRingFile": str(keyring),
                    "Filesystem": {"Root": str(home / "objects")},
                },
                **extra,
            },
        },
    )


def plain_config(home: Path, password: str) -> dict:
    return {
        "Name": "cstore-profile-plain",
        "HttpPort": HTTP_PORT,
        "DicomPort": DICOM_PORT,
        "DicomAet": AET,
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "storage"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"edge": password},
        "DicomModalities": {"DEMO_CT": dicom_modality("DEMO_CT", 104)},
        "Plugins": [],
    }


def storescu(folder: Path, port: int, prefix: list[str]) -> float:
    """C-STORE every file of a folder as a modality would (dcmtk, one association);
    `prefix` runs it under a tracer."""
    started = time.monotonic()
    subprocess.run(
        [*prefix, "storescu", "-aet", "DEMO_CT", "-aec", AET, "+sd", "127.0.0.1", str(port),
         str(folder)],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return time.monotonic() - started


# Plain Orthanc plus one piece of ours at a time (`--pieces`): which piece costs the
# modality's C-STORE its time. Each is a Python script for the Python plugin.
PIECES = {
    "python": "import orthanc\n",
    "filter": (
        "import json, orthanc\n"
        "def f(received):\n"
        "    tags = json.loads(received.GetInstanceSimplifiedJson())\n"
        "    return 0 if tags.get('SOPInstanceUID') else 0\n"
        "orthanc.RegisterIncomingCStoreInstanceFilter(f)\n"
    ),
    "storage": (
        "import orthanc, glue_common\n"
        "from pathlib import Path\n"
        "from imgcloud.storage.settings import storage_settings\n"
        "glue_common.register_storage('profile', storage_settings({{'ImagingCloud': {{\n"
        "    'Storage': {{'Backend': 'filesystem', 'Algorithm': 'aes-256-gcm',\n"
        "                 'KeyRingFile': '{home}/keyring.json',\n"
        "                 'Filesystem': {{'Root': '{home}/objects'}}}}}}}}))\n"
    ),
}
PIECES["change"] = PIECES["storage"] + (
    "import json\n"
    "def on_change(change_type, level, resource_id):\n"
    "    if change_type == orthanc.ChangeType.NEW_INSTANCE:\n"
    "        json.loads(orthanc.RestApiGet(f'/instances/{{resource_id}}/study'))\n"
    "orthanc.RegisterOnChangeCallback(on_change)\n"
)
PIECES["noop"] = PIECES["storage"] + (
    "def on_change(change_type, level, resource_id):\n"
    "    pass\n"
    "orthanc.RegisterOnChangeCallback(on_change)\n"
)
PIECES["nicereader"] = PIECES["storage"] + (
    "import io, os, queue, threading\n"
    "todo = queue.Queue()\n"
    "def read():\n"
    "    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)\n"
    "    while True:\n"
    "        orthanc.RestApiGet(f'/instances/{{todo.get()}}/study')\n"
    "threading.Thread(target=read, daemon=True).start()\n"
    "def on_change(change_type, level, resource_id):\n"
    "    if change_type == orthanc.ChangeType.NEW_INSTANCE:\n"
    "        todo.put(resource_id)\n"
    "orthanc.RegisterOnChangeCallback(on_change)\n"
)
PIECES["reader"] = PIECES["storage"] + (
    "import io, json, queue, threading\n"
    "from pydicom import dcmread\n"
    "todo = queue.Queue()\n"
    "def read():\n"
    "    while True:\n"
    "        data = orthanc.RestApiGet(f'/instances/{{todo.get()}}/file')\n"
    "        dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[])\n"
    "threading.Thread(target=read, daemon=True).start()\n"
    "def on_change(change_type, level, resource_id):\n"
    "    if change_type == orthanc.ChangeType.NEW_INSTANCE:\n"
    "        todo.put(resource_id)\n"
    "orthanc.RegisterOnChangeCallback(on_change)\n"
)


def piece_config(home: Path, password: str, piece: str) -> dict:
    script = home / "piece.py"
    if piece == "dicomweb":
        return plain_config(home, password) | {
            "Plugins": [str(PLUGIN_DIR / "libOrthancDicomWeb.so")],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
    script.write_text(PIECES[piece].format(home=home))
    return plain_config(home, password) | {
        "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
        "PythonScript": str(script),
        "Python": {"AllowThreads": True},
    }


def cpu_s(pid: int) -> dict[str, float]:
    return edge_cpu(pid, all_stats())


STAGES = (  # (stage, a frame that marks it), the first that a stack holds wins
    ("C-STORE filter", "_on_cstore"),
    ("storage create: seal", "seal ("),
    ("storage create: file write", "FileStore.put"),
    ("storage create: other", "EncryptedArchive.create"),
    ("storage read", "EncryptedArchive.read"),
    ("storage remove", "EncryptedArchive.remove"),
    ("background compression", "InPlaceCompressor"),
    ("change callback", "_on_change"),
    ("workers' loops (queue, replacer)", "run_forever"),
)


def stage_of(stack: str) -> str:
    for stage, marker in STAGES:
        if marker in stack:
            return stage
    return "other Python"


def collapse(raw: Path, rate: int, slices: int) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks of the threads holding the GIL -> ms per instance
    per stage, and the innermost frames that cost most."""
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stages[stage_of(stack)] += int(count)
        leaves[stack.split(";")[-1].split(" (")[0]] += int(count)

    def ms(n: int) -> float:
        return round(n * 1000 / rate / slices, 2)

    return {
        "gil_ms_per_instance": ms(sum(stages.values())),
        "stages": {k: ms(v) for k, v in stages.most_common()},
        "leaves": {k: ms(v) for k, v in leaves.most_common(12)},
    }


def run_one(
    name: str, config: dict, home: Path, study: Path, slices: int, password: str, args: Any
) -> dict[str, Any]:
    settings = StackSettings.from_env(os.environ.get("STACK_DIR"))
    path = home / "orthanc.json"
    path.write_text(json.dumps(config))
    argv, env = orthanc_command(settings, path, [home])
    with (home / "orthanc.log").open("w") as log:
        proc = subprocess.Popen(argv, env=os.environ | env, stdout=log, stderr=log)
    auth = ("edge", password)
    url = f"http://127.0.0.1:{HTTP_PORT}"
    spy = None
    try:
        wait_http(f"{url}/system", auth)
        if not name.startswith(("plain", "piece-")):
            with httpx.Client(base_url=url, auth=auth, timeout=30) as edge:
                rules = edge.get("/imaging-cloud/rules").json()
                rules |= {"version": rules["version"] + 1, "forwarding_enabled": False}
                edge.put("/imaging-cloud/rules", json=rules).raise_for_status()
        time.sleep(1.0)
        target = orthanc_pid(proc.pid)
        if args.pyspy and name != "plain":
            spy = subprocess.Popen(
                [args.pyspy, "record", "--gil", "--nonblocking", "--format", "raw",
                 "--rate", str(PYSPY_RATE), "-p", str(target), "-o", str(home / "pyspy.txt")],
                stdout=subprocess.DEVNULL, stderr=(home / "pyspy.log").open("w"),
            )  # fmt: skip
            time.sleep(1.0)
        if args.attach:  # e.g. "perf record -g -p {pid} -o {home}/perf.data"
            command = args.attach.format(pid=target, home=home)
            spy = subprocess.Popen(
                command.split(), stdout=subprocess.DEVNULL, stderr=(home / "attach.log").open("w")
            )
            time.sleep(1.0)
        before = cpu_s(proc.pid)
        wall = storescu(study, DICOM_PORT, args.client.format(home=home).split())
        after = cpu_s(proc.pid)
        time.sleep(3.0)  # the background compression's tail
        tail = cpu_s(proc.pid)
        with httpx.Client(base_url=url, auth=auth, timeout=30) as client:
            held = int(client.get("/statistics").json()["CountInstances"])
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        stop_processes([proc], wait_s=30)
    result: dict[str, Any] = {
        "variant": name,
        "held": held,
        "cstore_s": round(wall, 2),
        "wall_ms_per_instance": round(wall * 1000 / slices, 1),
        "orthanc_cpu_ms_per_instance": round(
            (after["orthanc"] - before["orthanc"]) * 1000 / slices, 2
        ),
        "workers_cpu_ms_per_instance": round(
            (after["workers"] - before["workers"]) * 1000 / slices, 2
        ),
        "tail_orthanc_cpu_ms_per_instance": round(
            (tail["orthanc"] - after["orthanc"]) * 1000 / slices, 2
        ),
    }
    if spy is not None and (home / "pyspy.txt").exists():
        result["pyspy"] = collapse(home / "pyspy.txt", PYSPY_RATE, slices)
    return result


def orthanc_pid(root: int) -> int:
    """The Orthanc process itself (the sandbox wraps it): the tree's member named Orthanc."""
    stats = all_stats()
    children = collections.defaultdict(list)
    for st in stats:
        children[st.ppid].append(st.pid)
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "Orthanc":
                return pid
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return root


def main() -> None:
    from imgcloud.storage.keyring import KeyRing, write_key_ring

    from deploy.samples.studies import make_study

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--cpu", type=int, default=0, help="the one core everything runs on")
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pyspy", default="", help="py-spy's path: profile each edge")
    parser.add_argument("--attach", default="", help="a profiler's command: {pid}, {home}")
    parser.add_argument("--client", default="", help="a tracer for storescu: {home}")
    parser.add_argument(
        "--pieces", default="", help="comma-separated: dicomweb," + ",".join(PIECES)
    )
    parser.add_argument("--no-plain", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    base = Path(os.environ.get("STACK_DIR") or REPO_ROOT / "var" / "cstore-profile") / "profile"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    study = base / "study"
    write_study(list(make_study(7, "CT", instances=args.slices).instances()), study)
    variants: list[tuple[str, dict[str, Any]]] = [] if args.no_plain else [("plain", {})]
    variants += [(f"piece-{p}", {}) for p in args.pieces.split(",") if p]
    variants.append(("edge", {}))
    for text in args.variant:
        name, _, settings = text.partition("=")
        variants.append((name, json.loads(settings)))
    password = secrets.token_urlsafe(16)
    for round_ in range(args.repeat):
        for name, extra in variants:
            home = base / f"{name}-{round_}"
            home.mkdir()
            if name == "plain":
                config = plain_config(home, password)
            elif name.startswith("piece-"):
                write_key_ring(KeyRing.generate("k1"), home / "keyring.json")
                config = piece_config(home, password, name.removeprefix("piece-"))
            else:
                keyring = home / "keyring.json"
                write_key_ring(KeyRing.generate("k1"), keyring)
                config = edge_config(home, keyring, password, extra)
            print(json.dumps(run_one(name, config, home, study, args.slices, password, args)))


if __name__ == "__main__":
    main()
