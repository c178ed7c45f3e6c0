"""The edge's calls to its own Orthanc: loopback REST (before) against in-process SDK calls
with Python.AllowThreads (after), in the same run, on the same stack.

    flock /tmp/imgcloud-stack.lock .venv/bin/python -m bench.local_calls_bench \
        [--instances 300] [--rounds 2] [--before REF] [--after REF]

Starts a private stack (var/bench-local-calls-*). Then, per round and variant, a fresh edge
Orthanc beside it (edge A's configuration with its own ports and state, so central, the
gateway and the indexer are the stack's) runs that variant's plugin code (`git archive REF
orthanc-plugins`), the demo modality C-STOREs a fresh CT study of N instances to it (dcmtk's
storescu, one association), and the bench waits until central holds all N. Variants:
- before: the plugin code before the switch (workers over loopback REST with the edge's own
  admin password), Python.AllowThreads off, as it ran;
- rest+threads: that code with AllowThreads on (separates the two changes);
- after: the current code (in-process SDK calls), AllowThreads on.
Printed per variant (median of the rounds): seconds from the C-STORE's start until central
holds the study, of which the C-STORE itself, and the edge process's CPU (user + system,
every thread: ingest, JPEG-LS, the workers, its HTTP server) per instance; then the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import down, load_context, up
from deploy.stack.ports import pick_free
from deploy.stack.sandbox import orthanc_command, platform_for
from deploy.stack.services.orthanc import DEMO_MODALITY_AET, deep_merge
from deploy.stack.settings import REPO_ROOT, StackSettings

# The commit that made the workers call the SDK; its parent is "before".
SWITCH = "in_process_transport"


def switch_parent() -> str:
    found = subprocess.run(
        ["git", "log", "--reverse", "--format=%H", "-S", SWITCH, "--",
         "orthanc-plugins/edge_plugin.py"],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    if not found:
        raise SystemExit("no commit switches the edge to SDK calls yet: give --before REF")
    return f"{found[0]}^"


def plugin_tree(ref: str, into: Path) -> Path:
    """The orthanc-plugins folder as of `ref`, unpacked under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "orthanc-plugins"],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return into / "orthanc-plugins"


def write_study(seed: int, instances: int, folder: Path) -> str:
    study = make_study(seed, "CT", instances=instances)
    folder.mkdir(parents=True)
    for index, ds in enumerate(study.instances()):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / f"{index:05d}.dcm").write_bytes(buffer.getvalue())
    return str(study.exam.study_instance_uid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, auth: tuple[str, str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, auth=auth, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def central_count(central: httpx.Client, uid: str) -> int:
    study_id = find_study(central, uid)
    if study_id is None:
        return 0
    return len(central.get(f"/studies/{study_id}/instances").json())


def one_run(
    settings: StackSettings,
    stack: StackClient,
    edge_a: dict[str, Any],
    tree: Path,
    allow_threads: bool,
    home: Path,
    seed: int,
    instances: int,
) -> dict[str, float]:
    http_port, dicom_port = pick_free(2, [])
    config = deep_merge(
        edge_a,
        {
            "Name": f"bench-{home.name}",
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "StorageDirectory": str(home / "storage"),
            "IndexDirectory": str(home / "storage"),
            "PythonScript": str(tree / "edge_plugin.py"),
            "Python": {"AllowThreads": allow_threads},
            "ImagingCloud": {
                "QueueFile": str(home / "forward-queue.sqlite"),
                "Storage": {"Filesystem": {"Root": str(home / "objects")}},
            },
        },
    )
    (home / "storage").mkdir(parents=True)
    (home / "orthanc.json").write_text(json.dumps(config))
    uid = write_study(seed, instances, home / "study")
    site = platform_for(settings).python_site
    # edge A's key ring, gateway secret and CA copy, which the merged configuration names,
    # read-only: each Orthanc's namespace shows only the folders it is given
    state = home.parent
    argv, env = orthanc_command(
        settings,
        home / "orthanc.json",
        [home],
        {"PYTHONPATH": f"{tree}:{site}"},
        private=[state / "keys" / "edge-a", state / "edge-a"],
    )
    log = (home / "orthanc.log").open("w")
    edge = subprocess.Popen(
        argv, env=os.environ | env, stdout=log, stderr=log, start_new_session=True
    )
    auth = next(iter(config["RegisteredUsers"].items()))
    try:
        wait_http(f"http://127.0.0.1:{http_port}/imaging-cloud/status", auth)
        cpu0, t0 = cpu_seconds(edge.pid), time.monotonic()
        subprocess.run(
            ["storescu", "-aet", DEMO_MODALITY_AET, "-aec", config["DicomAet"], "+sd",
             "127.0.0.1", str(dicom_port), str(home / "study")],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        stored = time.monotonic() - t0
        deadline = t0 + 900
        with stack.orthanc("CENTRAL_ORTHANC") as central:
            while (seen := central_count(central, uid)) < instances:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"central holds {seen} of {instances} after 900 s")
                time.sleep(0.25)
        total, cpu = time.monotonic() - t0, cpu_seconds(edge.pid) - cpu0
    finally:
        os.killpg(edge.pid, signal.SIGTERM)
        try:
            edge.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(edge.pid, signal.SIGKILL)
            edge.wait(10)
        log.close()
    return {"total_s": total, "store_s": stored, "cpu_ms_per_instance": cpu * 1000 / instances}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=None, help="plugin code before (default: the "
                        "parent of the commit that switched the workers to SDK calls)")  # fmt: skip
    parser.add_argument("--after", default="HEAD")
    args = parser.parse_args()

    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="bench-local-calls-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    settings = StackSettings.from_env(str(state))
    ctx = load_context(settings)
    before = args.before or switch_parent()
    trees = {
        "before": (plugin_tree(before, state / "code-before"), False),
        "rest+threads": (state / "code-before" / "orthanc-plugins", True),
        "after": (plugin_tree(args.after, state / "code-after"), True),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        up(ctx, say=lambda msg: print(msg, flush=True))
        stack = StackClient.from_file(settings.stack_env)
        # every edge has a plain and a TLS listener (EDGE_A_DICOM_PORT, _DICOM_TLS_PORT);
        # storescu sends plain, so the demo modality's AE title must not be TLS-only
        if stack.edge_dicom("A", DEMO_MODALITY_AET)[1] is not None:
            raise SystemExit(
                f"{DEMO_MODALITY_AET} may reach edge A over TLS only; storescu is plain"
            )
        edge_a = json.loads((state / "edge-a" / "orthanc.json").read_text())
        seed = 9100
        for round_no in range(args.rounds):
            order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
            for name in order:
                tree, allow = trees[name]
                seed += 1
                home = state / f"edge-{name.replace('+', '-')}-{round_no}"
                figures = one_run(settings, stack, edge_a, tree, allow, home, seed, args.instances)
                results[name].append(figures)
                print(f"round {round_no} {name:13s} " + json.dumps(figures), flush=True)
    finally:
        down(ctx, say=lambda _msg: None)
        shutil.rmtree(state, ignore_errors=True)

    median = {n: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for n, runs in
              results.items()}  # fmt: skip
    print(f"\n{args.instances} instances, {args.rounds} rounds, before = {before}, "
          f"after = {args.after}; median per variant:")  # fmt: skip
    print(
        f"{'variant':14s} {'C-STORE->central s':>19s} {'C-STORE s':>10s} {'edge CPU ms/inst':>17s}"
    )
    for name, m in median.items():
        print(f"{name:14s} {m['total_s']:19.1f} {m['store_s']:10.1f} "
              f"{m['cpu_ms_per_instance']:17.1f}")  # fmt: skip
    b, a = median["before"], median["after"]
    print(
        f"ratio after/before: time {a['total_s'] / b['total_s']:.2f}, "
        f"CPU per instance {a['cpu_ms_per_instance'] / b['cpu_ms_per_instance']:.2f}"
    )
    r = median["rest+threads"]
    print(
        f"ratio after/rest+threads: time {a['total_s'] / r['total_s']:.2f}, "
        f"CPU per instance {a['cpu_ms_per_instance'] / r['cpu_ms_per_instance']:.2f}"
    )


if __name__ == "__main__":
    main()
