"""Loaded by the bench's own Orthanc (the edge's: 1.12.7, Python plugin 5.0, DCMTK 3.6.9).

Times `orthanc.TranscodeDicomInstance(dicom, syntax).SerializeDicomInstance()`, the very
call the edge plugin makes, on every file of CODECS_BENCH_DIR/encode (to JPEG-LS lossless)
and of CODECS_BENCH_DIR/decode/<candidate> (back to explicit little endian: what central's
Orthanc does to render or convert another encoder's output), and whether Orthanc stores
each of those files at all (POST /instances, the syntax it records, then deleted). CPU is
the calling thread's (DCMTK runs in it), the best of CODECS_BENCH_REPEAT runs. Writes
the outputs and times.json, then the file `done`.
"""

import json
import os
import time
from pathlib import Path

import orthanc

HERE = Path(os.environ["CODECS_BENCH_DIR"])
REPEAT = int(os.environ.get("CODECS_BENCH_REPEAT", "3"))
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def _timed(dicom, syntax):
    best, out = None, b""
    for _ in range(REPEAT):
        start = time.thread_time()
        out = orthanc.TranscodeDicomInstance(dicom, syntax).SerializeDicomInstance()
        spent = time.thread_time() - start
        best = spent if best is None else min(best, spent)
    return best, out


def _each(source, target, syntax):
    times = {}
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        try:
            spent, out = _timed(path.read_bytes(), syntax)
        except Exception as exc:
            times[path.name] = {"error": str(exc)[:200]}
            continue
        (target / path.name).write_bytes(out)
        times[path.name] = {"cpu_s": spent}
    return times


def _stores(source):
    """Whether Orthanc stores each file (as central must), and the syntax it records."""
    said = {}
    for path in sorted(source.iterdir()):
        try:
            answer = json.loads(orthanc.RestApiPost("/instances", path.read_bytes()))
            uri = f"/instances/{answer['ID']}/metadata/TransferSyntax"
            syntax = orthanc.RestApiGet(uri).decode()
            orthanc.RestApiDelete(f"/instances/{answer['ID']}")
            said[path.name] = {"stored": syntax}
        except Exception as exc:
            said[path.name] = {"error": str(exc)[:200]}
    return said


def _run():
    results = {"encode": _each(HERE / "encode", HERE / "encoded", JPEG_LS_LOSSLESS)}
    decode = HERE / "decode"
    for candidate in sorted(decode.iterdir()) if decode.is_dir() else []:
        results[candidate.name] = _each(
            candidate, HERE / "decoded" / candidate.name, EXPLICIT_LITTLE
        )
        results["store/" + candidate.name] = _stores(candidate)
    (HERE / "times.json").write_text(json.dumps(results))
    (HERE / "done").write_text("ok")


def _on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        try:
            _run()
        except Exception as exc:
            (HERE / "failed").write_text(str(exc))


orthanc.RegisterOnChangeCallback(_on_change)
