"""The clinician's 互认 workspace in a real browser (#16): a clinician of hospital B logs in
through Keycloak, finds a patient's CT from hospital A by national ID (without a purpose
nothing is shown), reads A's report, opens the study in OHIF with the grant the lookup
opened (the image checked on the screenshot's pixels), records a decision, and the
regulator sees it in the statistics. Playwright drives Debian's Chromium, headless."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from deploy.stack.client import StackClient
from indexer.services import recognition

from ..integration.test_recognition import PriorExam, prior_ct_of_a
from ..support.eventually import eventually
from .conftest import new_page
from .test_viewer import shows_an_image, viewport_pixels

STATISTICS = "/api/v1/recognition/statistics"


@pytest.fixture(scope="module")
def prior(stack: StackClient) -> PriorExam:
    admin = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
    return prior_ct_of_a(stack, admin["access_token"], instances=4)


def log_in(page: Page, stack: StackClient, who: str) -> None:
    """Open the workspace: the login sends the browser to Keycloak's form, then back to
    the workspace's first page."""
    page.goto(stack["GATEWAY_URL"] + "/workspace/", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("#username", timeout=60_000)
    page.fill("#username", stack[f"DEMO_{who}_USER"])
    page.fill("#password", stack[f"DEMO_{who}_PASSWORD"])
    page.click("#kc-login")
    page.wait_for_url(stack["GATEWAY_URL"] + "/workspace/**", timeout=60_000)


def submit(page: Page, button: str) -> int:
    """Click a form's button; the status of the page it posts to."""
    with page.expect_navigation(timeout=60_000) as navigation:
        page.click(button)
    answer = navigation.value
    assert answer is not None
    return answer.status


def this_month_a_ct(stack: StackClient) -> int:
    """How many of this month's decisions on A's CTs the regulator's API counts."""
    token = stack.password_token(stack["DEMO_REGULATOR_USER"], stack["DEMO_REGULATOR_PASSWORD"])
    with stack.gateway(token["access_token"]) as api:
        answer = api.get(STATISTICS, params={"institution": "H0001", "modality": "CT"})
    assert answer.status_code == 200, answer.text
    month = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m")
    return sum(r["recognised"] for r in answer.json()["rows"] if r["period"] == month)


def test_clinician_b_finds_reads_views_and_recognises_a_ct_of_a(
    stack: StackClient, browser: Browser, prior: PriorExam
) -> None:
    study, logs = prior.study, Path(stack["STACK_DIR"]) / "logs"
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    before = this_month_a_ct(stack)
    page = new_page(browser, locale="zh-CN")
    log_in(page, stack, "CLINICIAN_B")
    # without a purpose, nothing is shown
    page.fill("#id_value", study.patient.national_id)
    assert submit(page, "#search") == 422
    assert page.locator("#error").is_visible()
    assert page.locator("#timeline").count() == 0
    assert study.exam.exam_no not in page.content()
    assert study.patient.national_id not in page.url  # the number went in the body
    # with one: the person's exams at every hospital
    page.fill("#id_value", study.patient.national_id)
    page.select_option("#purpose_choice", index=1)
    assert submit(page, "#search") == 200
    row = page.locator("tr.exam[data-institution='H0001'][data-modality='CT']")
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "Demo Hospital A" and cells[3] == "CHEST" and cells[5] == "4"
    assert study.patient.national_id not in page.url
    page.screenshot(path=str(logs / "e2e-workspace-timeline.png"))
    # A's report, apart from the images
    assert submit(page, "tr.exam[data-institution='H0001'] button.open-exam") == 200
    assert page.locator("#impression").inner_text() == study.report.impression
    viewer_url = page.locator("#open-viewer").get_attribute("href")
    assert viewer_url and study.exam.study_instance_uid in viewer_url
    # the viewer with the grant the lookup opened: the image on the screenshot's pixels
    viewer = page.context.new_page()
    viewer.goto(viewer_url, wait_until="domcontentloaded", timeout=60_000)
    viewer.wait_for_selector("canvas.cornerstone-canvas", timeout=90_000)
    eventually(
        lambda: shows_an_image(viewport_pixels(viewer)),
        what="the viewport showing A's CT",
        timeout=60,
        interval=1,
    )
    viewer.screenshot(path=str(logs / "e2e-workspace-viewer.png"))
    viewer.close()
    # the decision: recognised, so the CT is not repeated
    page.check("#outcome-recognised")
    assert submit(page, "#decide") == 200
    assert page.locator("#recorded").is_visible()
    page.context.close()
    # the regulator sees it in the statistics (and sees no patient data there)
    assert this_month_a_ct(stack) == before + 1
    regulator = new_page(browser)
    log_in(regulator, stack, "REGULATOR")
    regulator.goto(stack["GATEWAY_URL"] + "/workspace/statistics?institution=H0001&modality=CT")
    month = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m")
    line = regulator.locator(
        f"tr.stat[data-period='{month}'][data-institution='H0001'][data-modality='CT']"
    )
    assert line.locator("td.recognised").inner_text() == str(before + 1)
    html = regulator.content()
    for personal in (study.patient.national_id, study.patient.mrn, study.exam.exam_no):
        assert personal not in html
    regulator.screenshot(path=str(logs / "e2e-workspace-statistics.png"))
    regulator.context.close()
    check_audit(stack, since, prior.master_index_id)


def check_audit(stack: StackClient, since: str, master_index_id: str) -> None:
    """The pages' lookups and the decision are in the audit trail, with the purpose."""
    token = stack.password_token(stack["DEMO_AUDITOR_USER"], stack["DEMO_AUDITOR_PASSWORD"])
    purpose = recognition.PURPOSES[0]  # the list's first, picked in the form

    def recorded() -> dict[str, list[dict[str, object]]]:
        with stack.gateway(token["access_token"]) as auditor:
            answer = auditor.get("/api/v1/audit", params={"since": since, "limit": 10000})
        assert answer.status_code == 200
        by: dict[str, list[dict[str, object]]] = {}
        for event in answer.json()["events"]:
            if event["username"] == stack["DEMO_CLINICIAN_B_USER"]:
                by.setdefault(event["action"], []).append(event)
        assert {"api.workspace_search", "api.workspace_exam", "api.workspace_decision"} <= set(by)
        return by

    by = eventually(recorded, what="the workspace's requests in the audit trail", timeout=15)
    searches = by["api.workspace_search"]
    assert {e["outcome"] for e in searches} == {422, 200}  # without and with a purpose
    found = [e for e in searches if e["outcome"] == 200]
    assert found[-1]["purpose"] == purpose and str(found[-1]["resource"]).startswith("person:")
    for action in ("api.workspace_exam", "api.workspace_decision"):
        event = by[action][-1]
        assert (event["resource"], event["purpose"], event["outcome"]) == (
            f"master-index:{master_index_id}",
            purpose,
            200,
        )
