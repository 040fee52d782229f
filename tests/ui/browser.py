"""Headless Chromium for the dashboard's browser tests and screenshots (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium with the system driver)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()),
    None)


def missing() -> str | None:
    """Why no browser test can run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


def start_browser(width: int = 1280, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def color_scheme(driver: Any, scheme: str) -> None:
    """Make the page see ``prefers-color-scheme: scheme`` (light or dark)."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "prefers-color-scheme", "value": scheme}]})


def log_in(driver: Any, base: str, key: str, view: str = "nodes") -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/olol/ui/{view}")
    driver.find_element(By.ID, "key").send_keys(key)
    # a mark on this document's window: the next document's window has none
    driver.execute_script("window.__ololBeforeLogIn = true")
    driver.find_element(By.ID, "login").click()

    def answered(d: Any) -> bool:
        # the click only starts the form's POST: wait until its answer replaced the page
        try:
            return bool(d.execute_script(
                "return window.__ololBeforeLogIn === undefined"
                " && document.readyState === 'complete'"))
        except WebDriverException:  # between two documents
            return False

    WebDriverWait(driver, 20, poll_frequency=0.05).until(answered, "the page after log-in")


def wait_for(driver: Any, predicate: Any, timeout: float = 20.0, what: str = "") -> Any:
    """Bounded polling in the browser: the first truthy value of ``predicate(driver)``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        predicate, what)
