"""DCMTK's JPEG-LS as the edge runs it: inside Orthanc 1.12.7, through the Python plugin.

The bench starts an Orthanc of its own from the stack's Debian 13 root (same sandbox as
the stack: deploy.stack.sandbox), with no HTTP or DICOM listener and only the Python
plugin, whose script (bench/codecs_orthanc_plugin.py) times
`orthanc.TranscodeDicomInstance` on the files handed to it and writes what it got back.
So the baseline is the edge's own call into DCMTK 3.6.9, timed in the thread that runs it,
without HTTP, storage or process start-up around it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.stack.sandbox import ORTHANC_BIN, PLUGIN_DIR, OrthancPlatform, give_to_service

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "var" / "cache"
PLUGIN_SCRIPT = REPO / "bench" / "codecs_orthanc_plugin.py"


@dataclass
class OrthancRun:
    """What the bench's Orthanc measured: per file, CPU seconds and the output bytes."""

    encoded: dict[str, tuple[float, bytes]]
    decoded: dict[str, dict[str, tuple[float, bytes]]]  # candidate -> file -> (cpu, bytes)
    errors: dict[str, str]  # "phase/file" -> Orthanc's message
    root: Path | None
    stored: dict[str, dict[str, dict[str, str]]]  # candidate -> file -> stored|error


def orthanc_platform() -> OrthancPlatform:
    """The stack's platform; on a Debian 12 host whose root for today's lock file is not
    built (yet), the newest complete root (its Orthanc and DCMTK are the pinned ones)."""
    platform = OrthancPlatform.detect(REPO, CACHE, REPO / ".venv")
    if platform.root is None or (platform.root / ".complete").exists():
        return platform
    built = sorted(
        (p for p in CACHE.glob("orthanc-root-*") if (p / ".complete").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not built:
        raise SystemExit(f"no Orthanc root under {CACHE}: run make install")
    return OrthancPlatform(built[-1].resolve(), REPO / ".venv")


def _collect(folder: Path, times: dict[str, Any], phase: str, errors: dict[str, str]) -> dict:
    got = {}
    for name, spent in times.items():
        if "error" in spent:
            errors[f"{phase}/{name}"] = spent["error"]
        else:
            got[name] = (spent["cpu_s"], (folder / name).read_bytes())
    return got


MAX_CRASHES = 20


def _one_orthanc(argv: list[str], env: dict[str, str], work: Path, deadline: float) -> None:
    """Runs the bench's Orthanc until its plugin is done, it ends, or the deadline."""
    with (work / "orthanc.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not (work / "done").exists() and not (work / "failed").exists():
                if proc.poll() is not None:
                    (work / "exit").write_text(str(proc.returncode))  # negative: a signal
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"the bench's Orthanc timed out: {work}/orthanc.log")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    if (work / "failed").exists():
        raise SystemExit(f"the bench's plugin failed: {(work / 'failed').read_text()}")


def run(
    to_encode: dict[str, bytes],
    to_decode: dict[str, dict[str, bytes]],
    work: Path,
    repeat: int,
    timeout_s: float = 900.0,
) -> OrthancRun:
    """Encode `to_encode` (name -> file) to JPEG-LS lossless and decode every candidate's
    `to_decode` outputs to explicit little endian, in one Orthanc started for it."""
    platform = orthanc_platform()
    if work.exists():
        shutil.rmtree(work)
    (work / "encode").mkdir(parents=True)
    for name, dicom in to_encode.items():
        (work / "encode" / name).write_bytes(dicom)
    for candidate, files in to_decode.items():
        (work / "decode" / candidate).mkdir(parents=True)
        for name, dicom in files.items():
            (work / "decode" / candidate / name).write_bytes(dicom)
    config = {
        "Name": "codecs-bench",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpServerEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(PLUGIN_DIR / "libOrthancPython.so")],
        "PythonScript": str(PLUGIN_SCRIPT),
        "PythonVerbose": False,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    give_to_service(work)
    env = {
        "CODECS_BENCH_DIR": str(work),
        "CODECS_BENCH_REPEAT": str(repeat),
        "LC_ALL": "C.UTF-8",
        "HOME": str(work),
    }
    argv, outer_env = platform.command(
        [str(ORTHANC_BIN), str(work / "orthanc.json")],
        env,
        read_only=[REPO / "bench"],
        writable=[work],
    )
    crashes = 0
    deadline = time.monotonic() + timeout_s
    while not (work / "done").exists():
        _one_orthanc(argv, outer_env, work, deadline)
        if (work / "done").exists():
            break
        if not (work / "current").exists() or crashes >= MAX_CRASHES:
            tail = (work / "orthanc.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"the bench's Orthanc ended before its work was done:\n{tail}")
        crashes += 1  # the plugin records the file it was on, and skips it
        give_to_service(work)
    times: dict[str, dict[str, Any]] = {}
    results = work / "results.jsonl"
    for line in results.read_text().splitlines() if results.exists() else []:
        said = json.loads(line)
        times.setdefault(said.pop("phase"), {})[said.pop("name")] = said
    times.setdefault("encode", {})
    stored = {k.removeprefix("store/"): times.pop(k) for k in list(times) if k.startswith("store/")}
    errors: dict[str, str] = {}
    encoded = _collect(work / "encoded", times.pop("encode"), "encode", errors)
    decoded = {
        candidate: _collect(work / "decoded" / candidate, files, candidate, errors)
        for candidate, files in times.items()
    }
    return OrthancRun(encoded, decoded, errors, platform.root, stored)
