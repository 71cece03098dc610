"""In a real browser: the playground uploads an image, follows the request and plays its video.

Headless Chromium (the distribution's ``chromium`` and ``chromium-driver``) drives ``/playground`` on
the Procfile's ``web`` process in development mode with the offline backends and a real ``worker``,
callbacks going to the built-in receiver. The browser resolves no host but 127.0.0.1. Screenshots of
each state are kept in ``tests/artifacts/playground-*.png``, whether the test passes or fails.

Without Chromium (or one that cannot play H.264 MP4) the tests are skipped, except under
``CI=true``, where that is a failure (see ``tests/browser/chromium.py``).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from launch import free_port
from tests.browser.chromium import cannot_run, headless_chromium, needs_chromium
from tests.fakes.files import FileServer, probe
from tests.helpers import ROOT, ServiceProcess, wait_for, wait_until_serving

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # selenium is optional: tests.browser.chromium skips (or in CI fails) without it
    pass

ARTIFACTS = ROOT / "tests" / "artifacts"

API_KEY = "playground-test-key-0123456789abcdef"
#: Seconds for the web process to answer /healthz, for one step in the page, and for a request to finish.
START_TIMEOUT = 20.0
STEP_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0
HTTP_TIMEOUT = 5.0
#: The H.264 Constrained Baseline profile, which any browser that plays H.264 MP4 plays.
H264 = 'video/mp4; codecs="avc1.42E01E"'
PHONE_WIDTH = 375


pytestmark = [pytest.mark.e2e, needs_chromium]


@dataclass
class Running:
    """The running service: its address and a way to read its API with the test's key."""

    url: str
    web: ServiceProcess

    def answered(self, request_line: str) -> list[int]:
        """The status codes the web process answered to ``request_line`` (its access log)."""
        lines = [json.loads(line) for line in self.web.output.splitlines() if line.startswith("{")]
        return [line["status"] for line in lines if line.get("request") == f"{request_line} HTTP/1.1"]

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET ``path`` with the API key."""
        return requests.get(
            self.url + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=HTTP_TIMEOUT, **kwargs
        )

    def callbacks(self, request_id: str) -> list[dict[str, Any]]:
        """What the development receiver got for ``request_id``, oldest first."""
        entries = requests.get(self.url + "/dev/callbacks", timeout=HTTP_TIMEOUT).json()
        return [e for e in entries if e["request_id"] == request_id]


@pytest.fixture
def service(start_process: Callable[..., ServiceProcess], tmp_path: Path) -> Running:
    """``web`` and ``worker`` in development mode with the offline backends and API keys on."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "I2V_ENV": "development",
        "CAPTION_BACKEND": "local",
        "VIDEO_BACKEND": "local",
        "LOCAL_VIDEO_SECONDS": "2",
        "LOCAL_VIDEO_FPS": "12",
        "GAME_API_KEY": "",
        "I2V_API_KEYS": API_KEY,
        "I2V_AUTH_DISABLED": "0",
        "IMAGE_HOST_ALLOWLIST": "127.0.0.1",
        "MEDIA_DIR": str(tmp_path / "media"),
        "PUBLIC_BASE_URL": base,
        "CALLBACK_API_URL": base + "/dev/callbacks/{request_id}",
        # Two workers: a canceled request's FAILED callback goes out while the other still downloads.
        "WORKER_PROCESSES": "2",
    }
    web = start_process("web", HOST="127.0.0.1", PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path), **env)
    start_process("worker", **env)

    wait_until_serving(web, f"{base}/healthz", timeout=START_TIMEOUT)
    return Running(base, web)


class Shots:
    """Screenshots of each state, named after the test, kept in tests/artifacts/."""

    def __init__(self, driver: WebDriver, prefix: str) -> None:
        self.driver = driver
        self.prefix = prefix
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(self, state: str) -> Path:
        """Save the whole page as ``<prefix>-<state>.png``."""
        path = ARTIFACTS / f"{self.prefix}-{state}.png"
        # The full page, not only the window: grow the window to the document's height first.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.execute_script("return window.innerWidth")
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": max(600, height), "deviceScaleFactor": 1, "mobile": width <= PHONE_WIDTH},
        )
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """Headless Chromium with no way out to the internet that plays H.264; a last screenshot at the end."""
    with headless_chromium(
        tmp_path,
        window=(1100, 1400),
        # The video starts on its own, muted, as it would for a person who just submitted it.
        extra_flags=["--autoplay-policy=no-user-gesture-required"],
        # The console, for the Content-Security-Policy check.
        capabilities={"goog:loggingPrefs": {"browser": "ALL"}},
    ) as driver:
        try:
            yield driver
        finally:
            name = request.node.name.removeprefix("test_").replace("_", "-")
            Shots(driver, f"playground-{name}").take("last")


# -- page helpers -------------------------------------------------------------------------------------


def wait(driver: WebDriver, timeout: float = STEP_TIMEOUT) -> WebDriverWait:
    """A wait that tolerates elements the page replaced while it looked."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    """The element with ``element_id``."""
    return driver.find_element(By.ID, element_id)


def visible(driver: WebDriver, element_id: str, timeout: float = STEP_TIMEOUT) -> WebElement:
    """Wait until the element with ``element_id`` is shown, and return it."""

    def shown(_: WebDriver) -> WebElement | bool:
        element = by_id(driver, element_id)
        return element if element.is_displayed() else False

    return wait(driver, timeout).until(shown, f"#{element_id} never became visible")


def text_of(driver: WebDriver, element_id: str) -> str:
    """The text the page shows in the element (textContent, hidden or not)."""
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def view_status(driver: WebDriver) -> str:
    """The request's status as the view's badge says it (``data-status``)."""
    return by_id(driver, "view-status").get_attribute("data-status") or ""


def callback_status(driver: WebDriver) -> str:
    """The callback's status as the view says it."""
    return by_id(driver, "callback-status").get_attribute("data-status") or ""


def open_playground(driver: WebDriver, base_url: str) -> None:
    """Load the page, enter the API key, and check that everything came from the service itself."""
    driver.get(f"{base_url}/playground")
    key = visible(driver, "api-key")
    key.send_keys(API_KEY)
    key.send_keys(Keys.TAB)  # the change event: the page reloads its list with the key
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith(base_url) for name in loaded), f"the page reached outside the service: {loaded}"


def set_request_id(driver: WebDriver, request_id: str) -> None:
    """Replace the generated request id, as a person editing the field would."""
    field = by_id(driver, "request-id")
    generated = field.get_attribute("value")
    assert generated.startswith("pg-"), generated  # the page made one up
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(request_id)


def submit_url(driver: WebDriver, image_url: str, request_id: str) -> None:
    """Paste an image URL, name the request and submit it; wait for its view."""
    field = by_id(driver, "image-url")
    field.clear()
    field.send_keys(image_url)
    set_request_id(driver, request_id)
    by_id(driver, "submit").click()
    wait(driver).until(lambda d: text_of(d, "view-id") == request_id, f"the view never showed {request_id}")


def scene_png(path: Path) -> Path:
    """A generated picture with shapes and a gradient, written as PNG to ``path``."""
    image = Image.new("RGB", (640, 400))
    draw = ImageDraw.Draw(image)
    for x in range(640):
        draw.line([(x, 0), (x, 399)], fill=(40 + x // 4, 90, 200 - x // 5))
    draw.rectangle((60, 220, 260, 360), fill=(240, 200, 60))
    draw.ellipse((380, 60, 560, 240), fill=(220, 60, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def noise_png(side: int = 40) -> bytes:
    """A PNG of random pixels: it does not compress, so it stays about ``3 * side**2`` bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)).save(buffer, format="PNG")
    return buffer.getvalue()


def video_time(driver: WebDriver) -> tuple[int, float]:
    """The page's video: its readyState and currentTime."""
    state = driver.execute_script(
        "const v = document.querySelector('#video-holder video'); return v ? [v.readyState, v.currentTime] : null"
    )
    return (state[0], state[1]) if state else (0, 0.0)


def csp_violations(driver: WebDriver) -> list[str]:
    """Console messages of the page about anything its Content-Security-Policy refused."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def no_horizontal_scroll(driver: WebDriver) -> int:
    """Narrow the viewport to a 375 px phone and return the document's width there."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 800, "deviceScaleFactor": 1, "mobile": True},
    )
    return driver.execute_script("return document.documentElement.scrollWidth")


# -- the tests ----------------------------------------------------------------------------------------


def test_upload_submit_watch_the_stages_and_play_the_video(
    service: Running, browser: WebDriver, tmp_path: Path
) -> None:
    """A generated image uploaded through the page becomes a video that plays in the page."""
    shots = Shots(browser, "playground")
    playable = browser.execute_script("return document.createElement('video').canPlayType(arguments[0])", H264)
    if not playable:
        cannot_run(f"this Chromium cannot play H.264 MP4 ({H264})")
    open_playground(browser, service.url)
    shots.take("empty")

    # Choose a file: the page uploads it and fills in the image URL the API will take.
    by_id(browser, "image-file").send_keys(str(scene_png(tmp_path / "scene.png")))
    wait(browser).until(
        lambda d: by_id(d, "image-url").get_attribute("value").startswith(f"{service.url}/"),
        "the upload never filled in the image URL",
    )
    uploaded = by_id(browser, "image-url").get_attribute("value")
    assert by_id(browser, "image-preview").is_displayed()
    shots.take("uploaded")

    request_id = "playground-upload-1"
    set_request_id(browser, request_id)
    by_id(browser, "submit").click()
    wait(browser).until(lambda d: text_of(d, "view-id") == request_id)

    # The timeline fills in stage by stage; the page shows each stage it saw while polling.
    seen: list[str] = []
    running_shot: list[Path] = []

    def done() -> bool:
        current = browser.execute_script(
            "return Array.from(document.querySelectorAll('#timeline li[data-phase=current]'), li => li.dataset.stage)"
        )
        seen.extend(stage for stage in current if stage not in seen)
        if view_status(browser) == "processing" and not running_shot:
            running_shot.append(shots.take("running"))
        return view_status(browser) == "completed" and callback_status(browser) == "delivered"

    wait(browser, RUN_TIMEOUT).until(lambda _: done(), "the request never completed with its callback delivered")
    stamped = browser.execute_script(
        "return Array.from(document.querySelectorAll('#timeline li[data-phase=done]'), li => li.dataset.stage)"
    )
    assert stamped[:2] == ["queued", "captioning"], stamped
    assert {"captioning", "submitting", "delivering", "completed"} <= set(stamped), stamped
    assert seen, "the page never showed a stage in progress"

    # The record the page shows is the API's, for the uploaded image.
    record = service.get(f"/api/v1/i2v/{request_id}").json()
    assert record["image_url"] == uploaded
    assert text_of(browser, "prompt") == record["prompt"] and record["prompt"]
    assert text_of(browser, "result-title") == record["title"] and record["title"]
    assert by_id(browser, "download").get_attribute("href") == record["video_url"]

    # The video plays: enough data for the current frame, and its clock moves.
    wait(browser).until(lambda d: video_time(d)[0] >= 2, "the video never had data to show")
    times = []
    for _ in range(8):
        times.append(video_time(browser)[1])
        time.sleep(0.25)
    assert any(b > a for a, b in itertools.pairwise(times)), f"currentTime never advanced: {times}"
    video = browser.find_element(By.CSS_SELECTOR, "#video-holder video")
    for attribute in ("muted", "loop", "controls", "autoplay", "playsinline"):
        assert video.get_attribute(attribute) is not None, attribute
    assert probe(requests.get(record["video_url"], timeout=HTTP_TIMEOUT).content).codec == "h264"

    # The callback as it was sent, from the development receiver.
    [entry] = service.callbacks(request_id)
    wait(browser).until(lambda d: "COMPLETED" in text_of(d, "callback-body"), "the callback body never showed")
    assert record["video_url"] in text_of(browser, "callback-body")
    assert "/dev/callbacks" in text_of(browser, "callback-body-source")
    assert entry["body"]["data"]["output"]["url"] == record["video_url"]
    shots.take("completed")

    # The key's recent requests list it, with the uploaded image as its thumbnail.
    by_id(browser, "refresh-recent").click()
    # Read in one script: the page rebuilds the list whenever it reloads it.
    thumb = wait(browser).until(
        lambda d: d.execute_script(
            "const img = document.querySelector(`#recent button[data-request-id='${arguments[0]}'] img.thumb`);"
            "return img && img.closest('button').querySelector('.badge').textContent === 'completed'"
            " && {src: img.src, referrer: img.getAttribute('referrerpolicy'), status:"
            " img.closest('button').querySelector('.badge').textContent}",
            request_id,
        ),
        "the recent requests never listed it, completed, with a thumbnail",
    )
    assert thumb == {"src": uploaded, "referrer": "no-referrer", "status": "completed"}, thumb

    assert csp_violations(browser) == []

    # At phone width nothing scrolls sideways, video and all.
    assert no_horizontal_scroll(browser) <= PHONE_WIDTH
    Shots(browser, "playground").take("completed-375px")


def test_cancel_a_running_request_and_see_one_failed_callback(
    service: Running, browser: WebDriver, files: FileServer
) -> None:
    """Cancel while the worker still downloads the image: canceled, and exactly one FAILED callback.

    Until then the page polls a record that does not change, with If-None-Match: the answers are 304s.
    """
    shots = Shots(browser, "playground")
    # An image that trickles in for about 10 s keeps the request in its first stage (noise does not compress).
    slow = files.put("/slow.png", noise_png(), "image/png", drip=0.2)
    open_playground(browser, service.url)
    request_id = "playground-cancel-1"
    submit_url(browser, slow, request_id)
    cancel = visible(browser, "cancel")
    wait(browser).until(lambda d: view_status(d) == "processing", "the worker never took the request")
    # While the image trickles in nothing changes: polling sends the ETag back and gets 304s.
    wait_for(
        lambda: 304 in service.answered(f"GET /api/v1/i2v/{request_id}"),
        timeout=STEP_TIMEOUT,
        message="a 304 for the page's polling",
    )
    assert "captioning" in text_of(browser, "view-status")
    shots.take("running")
    cancel.click()

    wait(browser, RUN_TIMEOUT).until(
        lambda d: view_status(d) == "canceled" and callback_status(d) == "delivered",
        "the request never showed as canceled with its callback delivered",
    )
    assert not by_id(browser, "cancel").is_displayed()
    assert text_of(browser, "error-code") == "canceled"
    wait(browser).until(lambda d: "FAILED" in text_of(d, "callback-body"), "the FAILED body never showed")
    shots.take("canceled")
    time.sleep(1.0)  # a second callback would show up now
    entries = service.callbacks(request_id)
    assert [e["body"]["data"]["status"] for e in entries] == ["FAILED"], entries


def test_a_callback_refused_with_410_is_sent_again_from_the_page(service: Running, browser: WebDriver) -> None:
    """The receiver answers 410 once: the callback fails at once; the page's button sends it again."""
    shots = Shots(browser, "playground")
    steer = requests.post(
        f"{service.url}/dev/callbacks/answers", json={"status": 410, "count": 1}, timeout=HTTP_TIMEOUT
    )
    assert steer.status_code in (200, 201, 204), steer.text
    open_playground(browser, service.url)
    request_id = "playground-redeliver-1"
    submit_url(browser, f"{service.url}/dev/sample.png", request_id)

    wait(browser, RUN_TIMEOUT).until(
        lambda d: view_status(d) == "completed" and callback_status(d) == "failed",
        "the callback never showed as failed",
    )
    redeliver = visible(browser, "redeliver")
    attempts = text_of(browser, "callback-attempts")
    assert "410" in attempts, attempts
    shots.take("callback-failed")
    redeliver.click()

    wait(browser, RUN_TIMEOUT).until(lambda d: callback_status(d) == "delivered", "the callback was never delivered")
    assert not by_id(browser, "redeliver").is_displayed()
    attempts = text_of(browser, "callback-attempts")
    assert "410" in attempts and "200" in attempts, attempts
    shots.take("redelivered")
    record = service.get(f"/api/v1/i2v/{request_id}").json()
    assert [a["status_code"] for a in record["callback"]["history"]] == [410, 200], record["callback"]
    assert csp_violations(browser) == []

    # A fresh page keeps the key for the tab, and the recent list opens the request's view again.
    browser.get(f"{service.url}/playground")
    assert by_id(browser, "api-key").get_attribute("value") == API_KEY
    assert not by_id(browser, "view").is_displayed()
    item = f"#recent button[data-request-id='{request_id}']"
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, item), "the recent list never showed it")
    browser.find_element(By.CSS_SELECTOR, item).click()
    wait(browser).until(lambda d: text_of(d, "view-id") == request_id and callback_status(d) == "delivered")
    assert "410" in text_of(browser, "callback-attempts")


def test_an_image_dropped_on_the_page_is_uploaded(service: Running, browser: WebDriver) -> None:
    """A picture dropped on the drop zone (a drop event carrying a file) is uploaded like a chosen one."""
    open_playground(browser, service.url)
    browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const canvas = document.createElement('canvas');
        canvas.width = 320;
        canvas.height = 200;
        const ctx = canvas.getContext('2d');
        ctx.fillStyle = '#2a6'; ctx.fillRect(0, 0, 320, 200);
        ctx.fillStyle = '#fc3'; ctx.fillRect(40, 40, 120, 80);
        canvas.toBlob((blob) => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
          done();
        }, 'image/png');
        """
    )
    wait(browser).until(
        lambda d: by_id(d, "image-url").get_attribute("value").startswith(f"{service.url}/uploads/"),
        "the dropped image was never uploaded",
    )
    uploaded = requests.get(by_id(browser, "image-url").get_attribute("value"), timeout=HTTP_TIMEOUT)
    assert uploaded.status_code == 200
    assert uploaded.headers["Content-Type"].startswith("image/")
    assert Image.open(io.BytesIO(uploaded.content)).size == (320, 200)


def test_fits_a_phone_and_every_control_is_labelled_and_reached_by_tab(service: Running, browser: WebDriver) -> None:
    """At 375 px nothing scrolls sideways; Tab visits every control in order, each with a name."""
    open_playground(browser, service.url)
    submit_url(browser, f"{service.url}/dev/sample.png", "playground-" + "long-id-" * 14)
    wait(browser, RUN_TIMEOUT).until(lambda d: view_status(d) == "completed", "the request never completed")
    assert no_horizontal_scroll(browser) <= PHONE_WIDTH
    Shots(browser, "playground").take("phone")

    controls = browser.execute_script(
        """
        const selector = 'a[href], button, input, select, textarea, video[controls], [tabindex]:not([tabindex="-1"])';
        return Array.from(document.querySelectorAll(selector)).filter(
          (el) => !el.disabled && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden'
        );
        """
    )
    assert len(controls) >= 8, [c.get_attribute("id") for c in controls]
    for control in controls:
        name = browser.execute_script(
            """
            const el = arguments[0];
            if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
            if (el.labels && el.labels.length) return el.labels[0].textContent.trim();
            if (el.tagName !== 'INPUT') return el.textContent.trim();
            return '';
            """,
            control,
        )
        assert name, f"no label for {control.tag_name}#{control.get_attribute('id')}"

    # Clicking the page's heading puts the starting point of Tab navigation at the top.
    browser.execute_script("window.scrollTo(0, 0)")
    browser.find_element(By.TAG_NAME, "h1").click()
    reached: list[WebElement] = []
    # A video's own controls take several Tabs, all on the <video>: count each element once.
    for _ in range(len(controls) + 20):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        if reached and active == reached[0]:
            break  # round the page once
        if not reached or active != reached[-1]:
            reached.append(active)
    order = [controls.index(el) for el in reached if el in controls]
    assert len(order) == len(controls), (
        f"Tab reached {len(order)} of {len(controls)} controls: missed "
        f"{[c.get_attribute('id') or c.text for c in controls if c not in reached]}"
    )
    assert order == sorted(order), f"Tab order differs from the page's order: {order}"
