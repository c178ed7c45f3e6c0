"""The cloud viewer in a real browser: OHIF (served by the gateway) logs in through
Keycloak, reads the central archive's DICOMweb with the user's token, and shows only what
the user may read. Playwright drives Debian's Chromium, headless."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Response

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient

from ..integration.fresh import fresh_seed
from ..integration.test_edge_retrieval import delivered_to_central, pacs_for
from ..support.eventually import eventually
from .conftest import new_page


@pytest.fixture(scope="module")
def pushed_to_b(stack: StackClient) -> Iterator[SampleStudy]:
    """A CT study of hospital A, pushed to hospital B (跨院推送)."""
    study = make_study(fresh_seed(), "CT", instances=4, institution_code="H0001")
    delivered_to_central(stack, study)
    uid = study.exam.study_instance_uid
    rad_b = stack.password_token(
        stack["DEMO_RADIOLOGIST_B_USER"], stack["DEMO_RADIOLOGIST_B_PASSWORD"]
    )["access_token"]
    with pacs_for(stack, "B"), stack.orthanc("EDGE_A") as edge_a:
        answer = edge_a.post(
            "/imaging-cloud/pushes",
            json={"study_instance_uid": uid, "to_institution": stack["EDGE_B_INSTITUTION"]},
        )
        assert answer.status_code == 200, answer.text
        with stack.gateway(rad_b) as gw:
            eventually(
                lambda: gw.get(f"/dicom-web/studies/{uid}/metadata").status_code == 200,
                what="the push opens the study to B",
                timeout=120,
                interval=1,
            )
    yield study


@pytest.fixture(scope="module")
def unshared_of_a(stack: StackClient) -> SampleStudy:
    study = make_study(fresh_seed(), "CT", instances=2, institution_code="H0001")
    delivered_to_central(stack, study)
    return study


def log_in(page: Page, stack: StackClient, letter: str, path: str) -> None:
    """Open a viewer page; OHIF sends the browser to Keycloak's login form, then back."""
    page.goto(stack["GATEWAY_URL"] + path, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("#username", timeout=60_000)
    page.fill("#username", stack[f"DEMO_RADIOLOGIST_{letter}_USER"])
    page.fill("#password", stack[f"DEMO_RADIOLOGIST_{letter}_PASSWORD"])
    page.click("#kc-login")
    page.wait_for_url(stack["GATEWAY_URL"] + path.split("?")[0] + "**", timeout=60_000)


def viewport_pixels(page: Page) -> np.ndarray:
    """What the first image viewport shows, as grey levels from a screenshot."""
    shot = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("L"))


def shows_an_image(pixels: np.ndarray) -> bool:
    # An empty viewport is flat black; a CT slice has body, bone and air in it.
    return float((pixels > 40).mean()) > 0.05 and float(pixels.std()) > 20


def test_b_radiologist_opens_a_study_pushed_from_a(
    stack: StackClient, browser: Browser, pushed_to_b: SampleStudy
) -> None:
    page = new_page(browser)
    uid = pushed_to_b.exam.study_instance_uid
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/dicom-web/" in r.url else None)
    log_in(page, stack, "B", f"/viewer?StudyInstanceUIDs={uid}")
    page.wait_for_selector("canvas.cornerstone-canvas", timeout=60_000)
    eventually(
        lambda: shows_an_image(viewport_pixels(page)),
        what="the viewport showing the image",
        timeout=60,
        interval=1,
    )
    page.screenshot(path=str(Path(stack["STACK_DIR"]) / "logs" / "e2e-viewer-pushed-study.png"))
    assert statuses and set(statuses) <= {200}, sorted(set(statuses))
    page.context.close()


def test_b_radiologist_cannot_open_an_unshared_study_of_a(
    stack: StackClient, browser: Browser, pushed_to_b: SampleStudy, unshared_of_a: SampleStudy
) -> None:
    page = new_page(browser)
    uid = unshared_of_a.exam.study_instance_uid
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if "/dicom-web/" in r.url else None)
    log_in(page, stack, "B", f"/viewer?StudyInstanceUIDs={uid}")
    page.wait_for_timeout(8000)  # give the viewer every chance to load something
    about_it = [r for r in answers if uid in r.url]
    assert about_it, "the viewer never asked for the study"
    for answer in about_it:  # the search finds nothing, every direct read is refused
        if answer.url.split("?")[0].endswith("/dicom-web/studies"):
            assert answer.status == 200 and answer.json() == []
        else:
            assert answer.status == 403, answer.url
    canvases = page.locator("canvas.cornerstone-canvas")
    assert canvases.count() == 0 or not shows_an_image(viewport_pixels(page))
    # and the study list holds the pushed study but not the unshared one
    listed: list[Response] = []
    page.on("response", lambda r: listed.append(r) if "/dicom-web/studies?" in r.url else None)
    page.goto(stack["GATEWAY_URL"] + "/", wait_until="domcontentloaded")
    page.wait_for_timeout(3000)
    uids = {s["0020000D"]["Value"][0] for r in listed if r.ok for s in r.json()}
    assert pushed_to_b.exam.study_instance_uid in uids and uid not in uids
    page.context.close()


def test_login_page_and_viewer_speak_chinese(
    stack: StackClient, browser: Browser, pushed_to_b: SampleStudy
) -> None:
    """A browser set to Chinese gets Keycloak's login form and OHIF's panels in Chinese."""
    page = new_page(browser, locale="zh-CN")
    path = f"/viewer?StudyInstanceUIDs={pushed_to_b.exam.study_instance_uid}"
    page.goto(stack["GATEWAY_URL"] + path, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("#kc-login", timeout=60_000)
    assert page.locator("#kc-login").inner_text().strip() == "登录"
    page.fill("#username", stack["DEMO_RADIOLOGIST_B_USER"])
    page.fill("#password", stack["DEMO_RADIOLOGIST_B_PASSWORD"])
    page.click("#kc-login")
    page.wait_for_selector("text=检查", timeout=60_000)  # the study browser panel, "Studies"
    page.context.close()


def test_patient_share_link_opens_the_study_without_an_account(
    stack: StackClient, browser: Browser, unshared_of_a: SampleStudy
) -> None:
    """云胶片: the link (or its QR code) opens the one study in the viewer, no login."""
    uid = unshared_of_a.exam.study_instance_uid
    rad_a = stack.password_token(
        stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    )["access_token"]
    with stack.gateway(rad_a) as api:
        made = api.post(f"/api/v1/institutions/H0001/studies/{uid}/share-links", json={"hours": 1})
    assert made.status_code == 200, made.text
    page = new_page(browser)
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url))
    page.goto(made.json()["url"], wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("canvas.cornerstone-canvas", timeout=60_000)
    eventually(
        lambda: shows_an_image(viewport_pixels(page)),
        what="the viewport showing the image",
        timeout=60,
        interval=1,
    )
    assert not any("/auth/" in url for url in visited), visited  # never sent to a login
    page.screenshot(path=str(Path(stack["STACK_DIR"]) / "logs" / "e2e-share-link.png"))
    page.context.close()
