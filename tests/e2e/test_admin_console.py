"""Orthanc Explorer of the central archive in a browser, for platform administrators only:
they log in through Keycloak at /orthanc-login and the gateway takes their token from a
cookie that only /orthanc/ receives."""

from __future__ import annotations

from playwright.sync_api import Browser, Page

from deploy.stack.client import StackClient

from .conftest import new_page


def log_in_to_explorer(page: Page, stack: StackClient, who: str) -> int:
    """Log in at /orthanc-login; the status of the page the login ends on."""
    statuses: list[int] = []
    page.on(
        "response",
        lambda r: statuses.append(r.status) if r.request.is_navigation_request() else None,
    )
    page.goto(stack["GATEWAY_URL"] + "/orthanc-login", wait_until="domcontentloaded")
    page.wait_for_selector("#username", timeout=60_000)
    page.fill("#username", stack[f"DEMO_{who}_USER"])
    page.fill("#password", stack[f"DEMO_{who}_PASSWORD"])
    page.click("#kc-login")
    page.wait_for_url(lambda url: "/auth/realms/" not in url, timeout=60_000)
    page.wait_for_load_state("load", timeout=60_000)
    return statuses[-1]


def test_platform_admin_uses_orthanc_explorer_in_the_browser(
    stack: StackClient,
    browser: Browser,
) -> None:
    page = new_page(browser)
    assert log_in_to_explorer(page, stack, "ADMIN") == 200
    assert page.url == stack["GATEWAY_URL"] + "/orthanc/app/explorer.html"
    page.wait_for_selector("text=Lookup studies", timeout=30_000)
    # the page's own REST calls go through with the cookie
    system = page.evaluate("() => fetch('/orthanc/system').then(r => r.status)")
    assert system == 200
    # the cookie is for /orthanc/ only: DICOMweb and the API still want a bearer token
    assert page.evaluate("() => fetch('/api/v1/audit').then(r => r.status)") == 401
    page.context.close()


def test_a_radiologist_does_not_get_orthanc_explorer(
    stack: StackClient,
    browser: Browser,
) -> None:
    page = new_page(browser)
    assert log_in_to_explorer(page, stack, "RADIOLOGIST_A") == 403
    explorer = page.goto(stack["GATEWAY_URL"] + "/orthanc/app/explorer.html")
    assert explorer is not None and explorer.status == 401
    page.context.close()
