"""Loaded by the bench's own Orthanc (the edge's: 1.12.7, Python plugin 5.0, DCMTK 3.6.9).

Times `orthanc.TranscodeDicomInstance(dicom, syntax).SerializeDicomInstance()`, the very
call the edge plugin makes, on every file of CODECS_BENCH_DIR/encode (to JPEG-LS lossless)
and of CODECS_BENCH_DIR/decode/<candidate> (back to explicit little endian: what central's
Orthanc does to render or convert another encoder's output), and whether Orthanc stores
each of those files at all (POST /instances, the syntax it records, then deleted). CPU is
the calling thread's (DCMTK runs in it), the best of CODECS_BENCH_REPEAT runs.

Each result is appended to results.jsonl as it is known, and the task under way is named
in `current` first: if a file brings Orthanc down, the bench starts it again, and the
task named there is recorded as having crashed Orthanc and skipped. `done` at the end.
"""

import json
import os
import time
from pathlib import Path

import orthanc

HERE = Path(os.environ["CODECS_BENCH_DIR"])
REPEAT = int(os.environ.get("CODECS_BENCH_REPEAT", "3"))
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
BACK = "1.2.840.10008.1.2.1"  # explicit VR little endian
RESULTS = HERE / "results.jsonl"
CURRENT = HERE / "current"


def _timed(dicom, syntax):
    best, out = None, b""
    for _ in range(REPEAT):
        start = time.thread_time()
        out = orthanc.TranscodeDicomInstance(dicom, syntax).SerializeDicomInstance()
        spent = time.thread_time() - start
        best = spent if best is None else min(best, spent)
    return best, out


def _transcode(path, target, syntax):
    spent, out = _timed(path.read_bytes(), syntax)
    target.mkdir(parents=True, exist_ok=True)
    (target / path.name).write_bytes(out)
    return {"cpu_s": spent}


def _store(path):
    dicom = path.read_bytes()
    step = "POST /instances"
    try:
        answer = json.loads(orthanc.RestApiPost("/instances", dicom))
        step = "GET header"
        header = json.loads(orthanc.RestApiGet(f"/instances/{answer['ID']}/header?simplify"))
        step = "GET file"
        same = orthanc.RestApiGet(f"/instances/{answer['ID']}/file") == dicom
        step = "DELETE"
        orthanc.RestApiDelete(f"/instances/{answer['ID']}")
    except Exception as exc:
        return {"error": f"{step}: {exc}"[:200]}
    return {"stored": header.get("TransferSyntaxUID", ""), "same_bytes": same}


def _tasks():
    for path in sorted((HERE / "encode").iterdir()) if (HERE / "encode").is_dir() else []:
        yield "encode", path.name, lambda p=path: _transcode(p, HERE / "encoded", JPEG_LS_LOSSLESS)
    decode = HERE / "decode"
    for candidate in sorted(decode.iterdir()) if decode.is_dir() else []:
        back = HERE / "decoded" / candidate.name
        for path in sorted(candidate.iterdir()):
            yield (
                candidate.name,
                path.name,
                lambda p=path, to=back: _transcode(p, to, BACK),
            )
            yield "store/" + candidate.name, path.name, lambda p=path: _store(p)


def _record(phase, name, said):
    with RESULTS.open("a") as f:
        f.write(json.dumps({"phase": phase, "name": name, **said}) + "\n")


def _run():
    seen = set()
    if RESULTS.exists():
        seen = {
            (r["phase"], r["name"]) for r in map(json.loads, RESULTS.read_text().split("\n")[:-1])
        }
    if CURRENT.exists():  # Orthanc went down during this task the last time
        phase, name = json.loads(CURRENT.read_text())
        if (phase, name) not in seen:
            exit_file = HERE / "exit"
            how = exit_file.read_text() if exit_file.exists() else "?"
            _record(phase, name, {"error": f"Orthanc crashed on this file (exit status {how})"})
            seen.add((phase, name))
    for phase, name, task in _tasks():
        if (phase, name) in seen:
            continue
        CURRENT.write_text(json.dumps([phase, name]))
        try:
            said = task()
        except Exception as exc:
            said = {"error": str(exc)[:200]}
        _record(phase, name, said)
    CURRENT.unlink(missing_ok=True)
    (HERE / "done").write_text("ok")


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        try:
            _run()
        except Exception as exc:
            (HERE / "failed").write_text(str(exc))


orthanc.RegisterOnChangeCallback(_on_change)
