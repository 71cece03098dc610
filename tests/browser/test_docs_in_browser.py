"""In a real browser: ``/docs`` works offline, authorizes with an API key and runs "Try it out".

Headless Chromium from the distribution's ``chromium`` and ``chromium-driver`` packages drives the
Swagger UI that the ``web`` process (the Procfile's gunicorn) serves. The browser cannot resolve any
host but 127.0.0.1, so the page must bring everything it needs from the app itself. A screenshot of
the final page is kept in ``tests/artifacts/``, whether the test passes or fails. Without Chromium the
test is skipped, except under ``CI=true``, where that is a failure (see ``tests/browser/chromium.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from launch import free_port
from tests.browser.chromium import headless_chromium, needs_chromium
from tests.helpers import ROOT, ServiceProcess, wait_until_serving

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # selenium is optional: tests.browser.chromium skips (or in CI fails) without it
    pass

SCREENSHOT = ROOT / "tests" / "artifacts" / "docs-try-it-out.png"

API_KEY = "browser-test-key-0123456789abcdef"
REQUEST_ID = "browser-try-it-out-1"
IMAGE = "https://cdn.example.com/a.jpg"
SUBMIT_PATH = "/api/v1/i2v"
#: Seconds for the web process to answer /healthz, and for any one step in the page.
START_TIMEOUT = 15.0
STEP_TIMEOUT = 10.0


pytestmark = [pytest.mark.e2e, needs_chromium]


@pytest.fixture
def base_url(start_process: Callable[..., ServiceProcess], tmp_path: Path) -> str:
    """The ``web`` process with API keys on (authentication enabled), ready on a free port."""
    port = free_port()
    web = start_process(
        "web",
        HOST="127.0.0.1",
        PORT=str(port),
        XDG_RUNTIME_DIR=str(tmp_path),
        I2V_API_KEYS=API_KEY,
        I2V_AUTH_DISABLED="0",
    )
    url = f"http://127.0.0.1:{port}"

    wait_until_serving(web, f"{url}/healthz", timeout=START_TIMEOUT)
    return url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with no way out to the internet; saves a screenshot when the test ends."""
    with headless_chromium(tmp_path, window=(1280, 1500)) as driver:
        try:
            yield driver
        finally:
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOT))


def clickable(driver: WebDriver, css: str, within: WebElement | None = None) -> WebElement:
    """Wait until the element at ``css`` (inside ``within`` if given) can be clicked, and return it."""
    root = within or driver

    def find(_: WebDriver) -> WebElement | bool:
        found = root.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() and found[0].is_enabled() else False

    return WebDriverWait(driver, STEP_TIMEOUT).until(find, f"{css!r} never became clickable")


def replace_text(field: WebElement, text: str) -> None:
    """Replace a field's content the way a user would, so the page's own handlers see the change."""
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def test_docs_authorize_and_try_it_out(base_url: str, browser: WebDriver) -> None:
    """Swagger UI loads from the app alone, takes the API key and gets a 202 for a submission."""
    wait = WebDriverWait(browser, STEP_TIMEOUT)
    browser.get(f"{base_url}/docs")

    # The page renders from the app's own assets and spec: the title comes from /openapi.json.
    title = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert title.text.startswith("i2v")
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.startswith(f"{base_url}/docs/assets/") for name in loaded), loaded
    assert all(name.startswith(base_url) for name in loaded), f"the page reached outside the app: {loaded}"

    # Authorize with the API key for the bearerAuth scheme, then close the dialog.
    clickable(browser, ".scheme-container button.authorize").click()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".dialog-ux .modal-ux")))
    assert "bearerAuth" in dialog.text
    clickable(browser, "input[aria-label='auth-bearer-value']", dialog).send_keys(API_KEY)
    clickable(browser, ".auth-btn-wrapper button.authorize", dialog).click()
    wait.until(lambda _: "Logout" in dialog.text, "the dialog never showed the key as authorized")
    clickable(browser, ".auth-btn-wrapper button.btn-done", dialog).click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".dialog-ux")))

    # Expand POST /api/v1/i2v and fill in the request.
    block_xpath = f"//div[contains(@class,'opblock-post')][.//*[@data-path='{SUBMIT_PATH}']]"
    block = wait.until(ec.presence_of_element_located((By.XPATH, block_xpath)))
    clickable(browser, ".opblock-summary", block).click()
    clickable(browser, "button.try-out__btn", block).click()
    header = clickable(browser, "tr[data-param-name='x-request-id'][data-param-in='header'] input", block)
    header.send_keys(REQUEST_ID)
    replace_text(clickable(browser, "textarea.body-param__text", block), json.dumps({"image_id": IMAGE}))

    # Execute it and read the live response.
    clickable(browser, "button.execute", block).click()
    status = wait.until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".live-responses-table .response .response-col_status")),
        "no live response appeared",
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    response_body = block.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response .response-col_description"
    ).text
    assert status.text.strip() == "202", response_body
    curl = block.find_element(By.CSS_SELECTOR, ".curl-command").text
    assert f"Authorization: Bearer {API_KEY}" in curl, curl
    assert f"x-request-id: {REQUEST_ID}" in curl, curl

    # The browser's request was made with the key: the record belongs to it.
    record = requests.get(
        f"{base_url}{SUBMIT_PATH}/{REQUEST_ID}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    )
    assert record.status_code == 200, record.text
    assert record.json()["image_url"] == IMAGE
