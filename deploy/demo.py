"""The main job on sample data: a simulated CT modality sends a study to hospital A's edge,
the edge forwards it to the central archive, hospital A pushes it to hospital B, whose edge
collects it from central and delivers it to B's PACS (a stand-in); hospital A makes a share
link (云胶片) for the patient, and we print where to look.

Run by `make demo` after `make up`.
"""

from __future__ import annotations

import base64
import functools
import sys
import time
from pathlib import Path

from deploy.samples.pacs import HospitalPacs, PacsTls
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient, wait_for_instances
from deploy.stack.settings import StackSettings

print = functools.partial(print, flush=True)

DEMO_SEED = 20261127
DEMO_SLICES = 150


def main() -> int:
    settings = StackSettings.from_env()
    if not settings.stack_env.exists():
        print(f"demo: {settings.stack_env} not found: run `make up` first", file=sys.stderr)
        return 1
    stack = StackClient.from_file(settings.stack_env)
    study = make_study(
        DEMO_SEED, "CT", instances=DEMO_SLICES, institution_code=stack["EDGE_A_INSTITUTION"]
    )
    exam = study.exam
    print(f"demo: CT study of {DEMO_SLICES} slices, accession {exam.exam_no}")
    started = time.monotonic()
    result = stack.send_to_edge("A", study.instances())
    if not result.ok:
        print(f"demo: edge A refused {len(result.failed)} instances", file=sys.stderr)
        return 1
    print(
        f"demo: C-STORE to edge A ({stack['EDGE_A_AET']}) done in "
        f"{time.monotonic() - started:.1f} s; waiting for central"
    )
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        try:
            wait_for_instances(central, exam.study_instance_uid, DEMO_SLICES, timeout_s=300)
        except TimeoutError as exc:
            print(f"demo: the study did not reach central: {exc}", file=sys.stderr)
            return 1
    print(
        f"demo: all {DEMO_SLICES} instances are at central after "
        f"{time.monotonic() - started:.1f} s\n"
    )
    if push_to_b(stack, exam.study_instance_uid, DEMO_SLICES) != 0:
        return 1
    share_url = share_link(stack, exam.study_instance_uid, settings.state_dir / "demo-share-qr.png")
    gw = stack["GATEWAY_URL"]
    print("Where to look:")
    print(f"  Viewer (OHIF)     {gw}/viewer?StudyInstanceUIDs={exam.study_instance_uid}")
    print(f"  Study list        {gw}/")
    print(
        f"  Demo radiologist  {stack['DEMO_RADIOLOGIST_A_USER']} / "
        f"{stack['DEMO_RADIOLOGIST_A_PASSWORD']}  (hospital {stack['EDGE_A_INSTITUTION']})"
    )
    print(
        f"  ... and at B      {stack['DEMO_RADIOLOGIST_B_USER']} / "
        f"{stack['DEMO_RADIOLOGIST_B_PASSWORD']}  (sees the pushed study, nothing else of A's)"
    )
    print(f"  Patient's link    {share_url}  (QR code: {settings.state_dir / 'demo-share-qr.png'})")
    print(
        f"  Orthanc Explorer  {gw}/orthanc-login  "
        f"({stack['DEMO_ADMIN_USER']} / {stack['DEMO_ADMIN_PASSWORD']})"
    )
    print(
        f"  Keycloak admin    {stack['KEYCLOAK_INTERNAL_URL']}/admin/  (this host only; "
        f"realm {stack['KEYCLOAK_REALM']})"
    )
    print(
        f"  CA certificate    {stack['CA_CERT']}  (import it in the browser to trust the gateway)"
    )
    print(f"  All settings      {settings.stack_env}")
    return 0


def share_link(stack: StackClient, study_uid: str, qr_path: Path) -> str:
    """Hospital A's radiologist makes a 72-hour link to the study for the patient."""
    token = stack.password_token(
        stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    )["access_token"]
    code = stack["EDGE_A_INSTITUTION"]
    with stack.gateway(token) as api:
        answer = api.post(
            f"/api/v1/institutions/{code}/studies/{study_uid}/share-links", json={"hours": 72}
        )
    answer.raise_for_status()
    link = answer.json()
    qr_path.write_bytes(base64.b64decode(link["qr_code_png"].split(",", 1)[1]))
    return str(link["url"])


def push_to_b(stack: StackClient, study_uid: str, count: int) -> int:
    """跨院推送: A pushes the study to B; B's edge polls central and C-STOREs it to B's PACS."""
    pacs = HospitalPacs(  # mutual TLS only: B's edge reaches it through its TLS sidecar
        aet=stack["EDGE_B_PACS_AET"],
        port=int(stack["EDGE_B_PACS_PORT"]),
        tls=PacsTls(stack["CA_CERT"], stack["PACS_TLS_CERT"], stack["PACS_TLS_KEY"]),
    )
    started = time.monotonic()
    with pacs, stack.orthanc("EDGE_A") as edge_a:
        answer = edge_a.post(
            "/imaging-cloud/pushes",
            json={"study_instance_uid": study_uid, "to_institution": stack["EDGE_B_INSTITUTION"]},
        )
        if answer.status_code != 200:
            print(f"demo: the push was refused: {answer.text}", file=sys.stderr)
            return 1
        push_id = answer.json()["push_id"]
        print(f"demo: pushed to hospital {stack['EDGE_B_INSTITUTION']} (push {push_id})")
        state = "pending"
        while time.monotonic() - started < 180 and state not in ("delivered", "failed"):
            time.sleep(1)
            state = edge_a.get(f"/imaging-cloud/pushes/{push_id}").json()["state"]
        received = sum(1 for ds in pacs.received if str(ds.StudyInstanceUID) == study_uid)
    if state != "delivered" or received != count:
        print(f"demo: push {state}, B's PACS received {received} of {count}", file=sys.stderr)
        return 1
    print(
        f"demo: hospital B's PACS received all {received} instances "
        f"{time.monotonic() - started:.1f} s after the push\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
