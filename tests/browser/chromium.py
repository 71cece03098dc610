"""Headless Chromium for the browser tests: where it is, how it starts, and what a missing one means.

The distribution's ``chromium`` and ``chromium-driver`` packages, at ``/usr/bin`` unless
``CHROMIUM_BIN`` / ``CHROMEDRIVER_BIN`` say otherwise. Without them (or without selenium) the browser
tests are skipped, except under ``CI=true``, where that is a failure: CI installs Chromium, so its
absence is a broken set-up.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.remote.webdriver import WebDriver
except ImportError:  # selenium is optional: without it the browser tests are skipped (outside CI)
    webdriver = None

CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
IN_CI = os.environ.get("CI", "").lower() == "true"
#: Seconds a page may take to load before the driver gives up.
PAGE_LOAD_TIMEOUT = 10.0

#: Flags every browser test starts Chromium with: headless, quiet, and nothing reached but 127.0.0.1.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host name except the service's own address fails to resolve: no internet.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if webdriver is None:
        return "selenium is not installed"
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.is_file() or not os.access(binary, os.X_OK):
            return f"{binary} not found: install the Debian package {package}"
    return None


def cannot_run(reason: str) -> NoReturn:
    """Skip, or under ``CI=true`` fail: CI promises a working Chromium."""
    if IN_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(f"browser test skipped: {reason}")


#: Marks a browser test module: outside CI a machine without Chromium skips it; in CI
#: :func:`headless_chromium` fails instead.
needs_chromium = pytest.mark.skipif(not IN_CI and missing() is not None, reason=f"browser test skipped: {missing()}")


@contextlib.contextmanager
def headless_chromium(
    workdir: Path,
    window: tuple[int, int],
    extra_flags: Sequence[str] = (),
    capabilities: dict[str, Any] | None = None,
) -> Iterator[WebDriver]:
    """Start headless Chromium with :data:`FLAGS` and quit it on the way out.

    Args:
        workdir: Where the profile and ``chromedriver.log`` go (the test's ``tmp_path``).
        window: The window's width and height in pixels.
        extra_flags: Command-line flags beyond :data:`FLAGS`.
        capabilities: Extra WebDriver capabilities, e.g. ``goog:loggingPrefs``.

    Yields:
        The driver, with a page-load timeout of :data:`PAGE_LOAD_TIMEOUT`.
    """
    reason = missing()
    if reason:
        cannot_run(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    width, height = window
    for flag in (
        *FLAGS,
        *extra_flags,
        f"--user-data-dir={workdir / 'chromium-profile'}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        yield driver
    finally:
        driver.quit()
