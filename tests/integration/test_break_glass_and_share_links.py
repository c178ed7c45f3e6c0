"""Break-glass (emergency access with a reason, for one user, with an alert) and patient
share links (云胶片: a revocable, time-limited link to one study, opened without an
account), all through the gateway."""

from __future__ import annotations

import base64
import io
import secrets
from pathlib import Path

import httpx
from PIL import Image

from deploy.samples.studies import SampleStudy
from deploy.stack.client import StackClient

from ..support.eventually import eventually
from .test_dicomweb_authz import DICOM_JSON, study_of_a  # noqa: F401 - the fixture

METADATA = "/dicom-web/studies/{}/metadata"


def test_break_glass_needs_a_reason_opens_the_study_to_that_user_alone_and_alerts(
    stack: StackClient,
    tokens: dict[str, str],
    study_of_a: SampleStudy,  # noqa: F811
) -> None:
    uid = study_of_a.exam.study_instance_uid
    with stack.gateway(tokens["rad_b"]) as rad_b:
        assert rad_b.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 403
        short = rad_b.post("/api/v1/break-glass", json={"study_instance_uid": uid, "reason": "x"})
        assert short.status_code == 422 and "reason" in short.text
        own = tokens["rad_a"]
        with stack.gateway(own) as rad_a:  # one's own study needs none
            same = rad_a.post(
                "/api/v1/break-glass",
                json={"study_instance_uid": uid, "reason": "unconscious patient in ER"},
            )
            assert same.status_code == 422
        reason = "unconscious patient in ER, prior CT needed now"
        opened = rad_b.post(
            "/api/v1/break-glass", json={"study_instance_uid": uid, "reason": reason}
        )
        assert opened.status_code == 200, opened.text
        assert rad_b.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 200
        listed = rad_b.get("/dicom-web/studies", params={"StudyInstanceUID": uid}).json()
        assert [s["0020000D"]["Value"][0] for s in listed] == [uid]
    with stack.gateway(tokens["clin_b"]) as colleague:  # same hospital, did not ask
        assert colleague.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 403
    alert_id = opened.json()["alert_id"]
    with stack.gateway(tokens["auditor"]) as auditor:
        alerts = auditor.get("/api/v1/alerts", params={"open": "true"}).json()
        alert = next(a for a in alerts if a["id"] == alert_id)
        assert alert["kind"] == "break-glass" and alert["reason"] == reason
        assert alert["institution"] == "H0002" and alert["owner_institution"] == "H0001"
        done = auditor.post(f"/api/v1/alerts/{alert_id}/acknowledge").json()
        assert done["acknowledged_by"] == stack["DEMO_AUDITOR_USER"]
        still_open = auditor.get("/api/v1/alerts", params={"open": "true"}).json()
        assert alert_id not in {a["id"] for a in still_open}

        # the break-glass is in the audit trail with its purpose
        # (audit records are written in batches, every 100 ms)
        def recorded() -> bool:
            trail = auditor.get("/api/v1/audit", params={"resource": f"study:{uid}"}).json()
            return any(
                r["purpose"] == "break-glass"
                and r["outcome"] == 200
                and r["institution"] == "H0002"
                for r in trail["events"]
            )

        eventually(recorded, what="the break-glass in the audit trail", timeout=10)
    with stack.gateway(tokens["rad_b"]) as rad_b:  # radiologists do not read alerts
        assert rad_b.get("/api/v1/alerts").status_code == 403


def browser_like(stack: StackClient) -> httpx.Client:
    """No token, cookies kept: what a patient's phone does with the link."""
    return httpx.Client(base_url=stack["GATEWAY_URL"], verify=stack.ca_context(), timeout=30)


def test_share_link_opens_one_study_without_an_account_until_revoked(
    stack: StackClient,
    tokens: dict[str, str],
    study_of_a: SampleStudy,  # noqa: F811
) -> None:
    uid = study_of_a.exam.study_instance_uid
    links = f"/api/v1/institutions/H0001/studies/{uid}/share-links"
    with stack.gateway(tokens["rad_b"]) as rad_b:  # only the study's own institution shares
        assert rad_b.post(links, json={"hours": 24}).status_code == 403
    with stack.gateway(tokens["rad_a"]) as rad_a:
        assert rad_a.post(links, json={"hours": 0}).status_code == 422
        made = rad_a.post(links, json={"hours": 24})
        assert made.status_code == 200, made.text
        link = made.json()
        listed = rad_a.get(links).json()
    assert link["url"].startswith(stack["GATEWAY_URL"] + "/s/")
    assert all("url" not in item for item in listed) and link["id"] in {i["id"] for i in listed}
    qr = Image.open(io.BytesIO(base64.b64decode(link["qr_code_png"].split(",", 1)[1])))
    assert qr.format == "PNG" and qr.width >= 150
    secret = link["url"].rsplit("/", 1)[1]

    with browser_like(stack) as phone:
        landing = phone.get(f"/s/{secret}")
        assert landing.status_code == 303
        assert landing.headers["location"] == f"/viewer?StudyInstanceUIDs={uid}"
        cookie = landing.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "max-age=" in cookie
        assert phone.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 200
        found = phone.get("/dicom-web/studies", headers=DICOM_JSON).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [uid]
        # nothing else: another study, the API, central's REST
        assert phone.get(METADATA.format("1.2.3.4.5"), headers=DICOM_JSON).status_code == 403
        assert phone.get("/api/v1/audit").status_code == 401
        assert phone.get("/orthanc/system").status_code == 401
        with stack.gateway(tokens["rad_a"]) as rad_a:
            gone = rad_a.delete(f"{links}/{link['id']}")
            assert gone.status_code == 200 and gone.json()["revoked_at"]
        assert phone.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 401
        again = phone.get(f"/s/{secret}")
        assert again.status_code == 404 and "过期" in again.text
    with browser_like(stack) as another:  # /s/exit forgets a link in the browser
        assert another.get(f"/s/{secret}").status_code == 404  # (revoked by now)
        with stack.gateway(tokens["rad_a"]) as rad_a:
            fresh = rad_a.post(links, json={"hours": 1}).json()["url"].rsplit("/", 1)[1]
        assert another.get(f"/s/{fresh}").status_code == 303
        assert another.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 200
        assert another.get("/s/exit").status_code == 303
        assert another.get(METADATA.format(uid), headers=DICOM_JSON).status_code == 401
    with browser_like(stack) as stranger:  # a made-up secret looks the same
        assert stranger.get("/s/" + secrets.token_urlsafe(32)).status_code == 404
    access_log = Path(stack["STACK_DIR"]) / "gateway" / "logs" / "access.log"
    assert "/s/(secret)" in access_log.read_text() and secret not in access_log.read_text()
