"""Memory soak of central (`python -m bench.archive_bench --soak N`): ingest N new instances
in batches and print central's resident memory after each batch."""

from __future__ import annotations

import io
from pathlib import Path

from deploy.stack.client import StackClient
from deploy.stack.processes import read_pid
from deploy.stack.settings import StackSettings


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(stack: StackClient, settings: StackSettings, total: int, clients: int) -> None:
    """Ingest `total` instances into central, sampling its resident memory."""
    pid = read_pid(settings.run_dir, "central")
    if pid is None:
        raise SystemExit("central is not running (no live pid in its pid file)")
    url, auth = (
        stack["CENTRAL_ORTHANC_URL"],
        (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"]),
    )
    batch = 250
    from .archive_bench import generate, ingest

    files, ids = generate(batch, seed=9000)
    print(f"soak: {total} instances in batches of {batch}, {clients} clients")
    print(f"{'instances':>10} {'central RSS MB':>15} {'inst/s':>8}")
    print(f"{0:>10} {rss_mb(pid):>15.0f}")
    done = 0
    round_no = 0
    while done < total:
        # New UIDs per batch, so every round adds new instances.
        from pydicom import dcmread
        from pydicom.uid import generate_uid

        round_no += 1
        study_uid = generate_uid()
        series_uid = generate_uid()
        renamed = []
        for raw in files:
            ds = dcmread(io.BytesIO(raw))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            renamed.append(buffer.getvalue())
        seconds = ingest(url, auth, renamed, clients)
        done += len(renamed)
        print(f"{done:>10} {rss_mb(pid):>15.0f} {len(renamed) / seconds:>8.1f}", flush=True)
    del ids
