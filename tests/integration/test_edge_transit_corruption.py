"""An instance corrupted between the edge and central is caught by its SHA-256 and resent.

The edge's test hook (IMGCLOUD_TEST_CORRUPT_SENDS) flips a byte in the first uploads after
they were hashed, as a faulty link would; the edge is restarted with it for this test only.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, find_study
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.settings import StackSettings

from .test_edge_resilience import forwarding_state, wait_until

CORRUPTED = 2


@pytest.fixture
def edge_a_with_a_bad_link(stack_settings: StackSettings) -> Iterator[None]:
    ctx = load_context(stack_settings)
    stop_service(ctx, "edge-a")
    os.environ["IMGCLOUD_TEST_CORRUPT_SENDS"] = str(CORRUPTED)
    try:
        start_service(ctx, "edge-a")
    finally:
        del os.environ["IMGCLOUD_TEST_CORRUPT_SENDS"]
    try:
        yield
    finally:
        stop_service(ctx, "edge-a")
        start_service(ctx, "edge-a")  # without the hook


def file_hashes(client, study_uid: str) -> dict[str, str]:
    study_id = find_study(client, study_uid)
    hashes = {}
    for item in client.get(f"/studies/{study_id}/instances").json():
        raw = client.get(f"/instances/{item['ID']}/file").content
        hashes[item["MainDicomTags"]["SOPInstanceUID"]] = hashlib.sha256(raw).hexdigest()
    return hashes


def test_corrupted_upload_is_detected_and_resent(
    stack: StackClient, stack_settings: StackSettings, edge_a_with_a_bad_link: None
) -> None:
    central_log = stack_settings.log("central")
    discards_before = central_log.read_text(errors="replace").count("hash mismatch")
    study = make_study(
        random.randrange(100_000, 900_000),  # noqa: S311 - a fresh study, not a secret
        "CT",
        instances=10,
        institution_code=stack["EDGE_A_INSTITUTION"],
    )
    uid = study.exam.study_instance_uid
    result = stack.send_to_edge("A", study.instances())
    assert result.ok and result.sent == 10
    wait_until(
        lambda: (forwarding_state(stack, uid) or {}).get("state") == "delivered",
        180,
        "delivery despite the bad link",
    )
    with stack.orthanc("EDGE_A") as edge:
        at_edge = file_hashes(edge, uid)
        edge_bytes = sum(
            len(edge.get(f"/instances/{i['ID']}/file").content)
            for i in edge.get(f"/studies/{find_study(edge, uid)}/instances").json()
        )
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        at_central = file_hashes(central, uid)
        originals = {str(d.SOPInstanceUID): d for d in study.instances()}
        study_id = find_study(central, uid)
        for item in central.get(f"/studies/{study_id}/instances").json():
            got = pydicom.dcmread(io.BytesIO(central.get(f"/instances/{item['ID']}/file").content))
            assert np.array_equal(got.pixel_array, originals[str(got.SOPInstanceUID)].pixel_array)
    assert at_central == at_edge  # every instance at central is exactly what the edge holds
    # central noticed the two bad copies, threw them away, and the edge sent them again
    discards = central_log.read_text(errors="replace").count("hash mismatch") - discards_before
    assert discards == CORRUPTED
    assert forwarding_state(stack, uid)["bytes_sent"] > edge_bytes  # type: ignore[index]
