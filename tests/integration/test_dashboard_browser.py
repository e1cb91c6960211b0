"""The admin dashboard in headless Chromium, against a live server and a real worker.

Debian's ``chromium`` and ``chromium-driver`` (``make servers`` installs
them) driven by Selenium with the system chromedriver -- no browser
download. The test logs in through the admin's login form, watches a
worker appear and a real task's progress bar advance without reloading the
page, then presses *Retry* on a failed task, declines the confirmation (nothing is sent), presses it
again, confirms, and sees the new task succeed.
Screenshots go to ``test-artifacts/`` (``TASKS_Q_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from django_tasks_q.results.async_result import AsyncResult
from testproject.videos.tasks import compress, needs_file
from tests.workers import ROOT, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "dashboard-browser"
ARTIFACTS = Path(os.environ.get("TASKS_Q_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def chromium_paths() -> tuple[str, str]:
    """The system Chromium and its driver; missing ones fail the test (``make servers`` installs them)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("Debian packages chromium and chromium-driver are needed (make servers installs them)")
    return browser, driver


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    profile = tempfile.mkdtemp(prefix="tasksq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1300", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def eventually(check, timeout: float = 30, interval: float = 0.2):
    """Poll ``check()`` until it returns something truthy; its last exception or value explains a timeout."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:  # the element is not there yet, or was redrawn under us
            last = exc
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s: {last!r}")


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_dashboard_shows_a_worker_a_moving_progress_bar_and_retries_a_failure(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("boss", email="boss@example.com", password="dashboard-pw")
    with WorkerProcess("django://", "-P", "threads", "-c", "2", "-Q", QUEUE, "-n", "dash@%h") as _worker:
        browser.get(live_server.url + "/admin/django_tasks_q/dashboard/")
        browser.find_element(By.ID, "id_username").send_keys("boss")
        browser.find_element(By.ID, "id_password").send_keys("dashboard-pw")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        eventually(lambda: browser.current_url.endswith("/admin/django_tasks_q/dashboard/"))
        # the dashboard page itself, loaded: a flag set while the login's redirect still loads it is dropped
        eventually(lambda: browser.execute_script("return document.readyState") == "complete"
                   and browser.find_elements(By.ID, "tasksq-dashboard"))

        browser.execute_script("window.tqSamePage = true")  # a reload would drop it
        eventually(lambda: "online" in browser.find_element(By.CSS_SELECTOR,
                                                             "#tq-workers tr[data-hostname^='dash@']").text)
        assert QUEUE in browser.find_element(By.ID, "tq-queues").text

        missing = tmp_path / "input.txt"
        failed = needs_file.apply_async((str(missing),), queue=QUEUE)
        assert failed.get(timeout=30, propagate=False) is not None and failed.state == "FAILURE"
        failure_row = f"#tq-failures tr[data-task-id='{failed.id}']"
        eventually(lambda: "FileNotFoundError" in browser.find_element(By.CSS_SELECTOR, failure_row).text)

        running = compress.apply_async(("clip-7",), {"steps": 12, "delay": 0.5}, queue=QUEUE)
        bar = f"progress[data-task-id='{running.id}']"
        first = eventually(lambda: int(browser.find_element(By.CSS_SELECTOR, bar).get_attribute("value")))
        later = eventually(lambda: int(browser.find_element(By.CSS_SELECTOR, bar).get_attribute("value")) > first
                           and int(browser.find_element(By.CSS_SELECTOR, bar).get_attribute("value")))
        assert later > first  # the bar moved while the page stayed loaded
        assert browser.execute_script("return window.tqSamePage") is True  # redrawn, not reloaded
        assert screenshot(browser, "dashboard.png").stat().st_size > 10_000
        assert running.get(timeout=30)["compressed"] is True

        missing.write_text("fixed")
        retry = f"{failure_row} button.tq-retry"
        browser.find_element(By.CSS_SELECTOR, retry).click()
        eventually(lambda: browser.switch_to.alert).dismiss()  # the page asks first; "no" sends nothing
        assert "not sent again" in eventually(lambda: browser.find_element(By.ID, "tq-message").text)
        browser.find_element(By.CSS_SELECTOR, retry).click()
        question = eventually(lambda: browser.switch_to.alert)
        assert "again with the same arguments" in question.text and needs_file.name in question.text
        question.accept()
        message = eventually(lambda: re.search(r"again as ([0-9a-f-]{36})",
                                               browser.find_element(By.ID, "tq-message").text))
        assert AsyncResult(message.group(1)).get(timeout=30) == "fixed"

        # the charts drew the finished and the failed task of this minute
        eventually(lambda: browser.find_elements(By.CSS_SELECTOR, "#tq-chart-hour rect.failed")
                   and browser.find_elements(By.CSS_SELECTOR, "#tq-chart-hour rect.ok"))
        assert "1 failed" in browser.find_element(By.CSS_SELECTOR, "#tq-chart-hour .tq-legend").text
        screenshot(browser, "dashboard-after-retry.png")
