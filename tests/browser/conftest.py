"""Browser tests of the playground: Debian's Chromium driven by Selenium (/usr/bin/chromedriver), headless, against
real server processes. One browser for the whole run; each test module starts its own server.

The flags keep a machine without internet quiet: no sync, no component updates, no background networking, no QUIC.
Without Chromium the tests skip, except in CI (CI set), where they must run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import ROOT, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BUNDLED_MODEL = ROOT / "model" / "artifacts" / "shakespeare-lstm.onnx"
SCREENSHOTS = ROOT / "docs" / "screenshots"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--lang=en-US",
)

pytestmark = pytest.mark.e2e


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return ", ".join(missing) or None


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI, but {missing} is not installed (make system-deps dev)")
        pytest.skip(f"{missing} not installed: `make system-deps dev` installs chromium, chromium-driver, selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1440,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def start_server(tmp_path: Path, name: str, **env: str) -> ServerProcess:
    """A real `python -m service` on the bundled model (it loads in about a second)."""
    server = ServerProcess(BUNDLED_MODEL, tmp_path, name, env=env).start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def wait_for(browser: Any, condition: Callable[[Any], Any], timeout: float = 15.0, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition, message=what)


def js(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def by_testid(browser: Any, testid: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def idle(browser: Any) -> bool:
    return bool(js(browser, "return !!(window.playground && window.playground.idle)"))


def console_errors(browser: Any) -> list[dict[str, Any]]:
    """Console messages at SEVERE since the last call (the log is emptied as it is read)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(browser: Any, name: str, width: int) -> Path:
    """The whole page at `width` CSS pixels wide, saved as docs/screenshots/<name>."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    )
    time.sleep(0.3)  # the page redraws its canvases on resize
    height = int(js(browser, "return Math.ceil(document.documentElement.scrollHeight)"))
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    time.sleep(0.3)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    browser.save_screenshot(str(path))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path
