"""Flower in a real browser: headless Debian Chromium logs in with the generated credentials and
sees both workers of a running compose stack; the screenshot is the one the generated README shows.

UPDATE_SCREENSHOT=1 also copies the new screenshot into the template (docs/flower.png).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
from conftest import TEMPLATE, run, running_stack
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = "docs/flower.png"


@pytest.fixture(scope="module")
def stack(require_docker, tmp_path_factory):
    # Its own stack (project name, image tag, Flower port), so it does not depend on the order
    # in which the e2e suite brings the shared `compose_stack` down and up again.
    with running_stack(tmp_path_factory.mktemp("flower"), "flower-browser") as stack:
        yield stack


@pytest.fixture
def browser(tmp_path):
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), (
            f"{path} missing: apt-get install chromium chromium-driver (.ci/setup does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,720",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would try to download one.
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def worker_rows(driver) -> list[str]:
    # Read in one go: Flower's table re-renders itself, which leaves element handles stale.
    script = "return [...document.querySelectorAll('table tbody tr')].map(r => r.innerText)"
    return [row.strip() for row in driver.execute_script(script) if row.strip()]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_flower_dashboard_lists_both_workers(stack, browser):
    # Without credentials Flower refuses: basic auth is really on.
    browser.get(stack.flower_url + "/")
    assert "cpu@" not in browser.page_source
    status = stack.compose("exec", "-T", "flower", "python", "-c", PROBE, check=False)
    assert status.stdout.strip() == "401", status.stdout + status.stderr

    # Log in with the credentials the generator wrote (.env, secrets/).
    token = base64.b64encode(
        f"{stack.env['FLOWER_USER']}:{stack.secret('flower_password')}".encode()
    ).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )

    def both_workers_listed(driver) -> list[str] | bool:
        driver.get(stack.flower_url + "/workers")
        rows = worker_rows(driver)
        names = [row.split()[0] for row in rows]
        ready = any(n.startswith("cpu@") for n in names) and any(n.startswith("io@") for n in names)
        return rows if ready and all("Online" in row for row in rows) else False

    try:
        rows = WebDriverWait(browser, 90, poll_frequency=2).until(both_workers_listed)
    except TimeoutException:
        pytest.fail(f"Flower never listed both workers online; rows: {worker_rows(browser)}")
    assert len(rows) == 2, rows
    assert "Flower" in browser.title

    # Some work through the stack, so the dashboard (and the screenshot) shows it counted.
    stack.compose(
        "run", "--rm", "producer", "--cpu", "4", "--io", "20", "--cpu-limit", "20000", timeout=300
    )

    def succeeded(driver) -> int | bool:
        driver.get(stack.flower_url + "/workers")
        card = re.search(r"Succeeded\s+(\d+)", driver.find_element(By.TAG_NAME, "body").text)
        return card is not None and int(card.group(1)) >= 24

    try:
        WebDriverWait(
            browser, 60, poll_frequency=2, ignored_exceptions=(StaleElementReferenceException,)
        ).until(succeeded)
    except TimeoutException:
        body = browser.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"Flower never counted the 24 tasks; page text:\n{body}")

    png = browser.get_screenshot_as_png()
    width, height = png_size(png)
    assert width == 1280 and height >= 400, (width, height)  # window minus headless chrome's frame
    (stack.path / SCREENSHOT).write_bytes(png)
    if os.environ.get("UPDATE_SCREENSHOT"):
        (TEMPLATE / "{{cookiecutter.project}}" / SCREENSHOT).write_bytes(png)


# Run inside the flower container: the status of an unauthenticated request.
PROBE = """
import urllib.error, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:5555/workers").status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_generated_readme_shows_the_screenshot(default_project):
    shipped = default_project / SCREENSHOT
    assert png_size(shipped.read_bytes())[0] >= 800
    # Copied byte for byte, not rendered.
    assert shipped.read_bytes() == (TEMPLATE / "{{cookiecutter.project}}" / SCREENSHOT).read_bytes()
    assert (
        f"![Flower dashboard listing the cpu and io workers]({SCREENSHOT})"
        in (default_project / "README.md").read_text()
    )


def test_chromium_and_driver_match():
    assert shutil.which("chromium") and shutil.which("chromedriver"), "run .ci/setup"
    browser_major = run([CHROMIUM, "--version"], cwd=Path.cwd()).stdout.split()[1].split(".")[0]
    driver_major = run([CHROMEDRIVER, "--version"], cwd=Path.cwd()).stdout.split()[1].split(".")[0]
    assert browser_major == driver_major


def test_api_docs_page_renders_every_route_from_the_image(stack, browser):
    """The API's OpenAPI page: Swagger UI's files come from the image (no CDN reachable here),
    its script renders one block per route, and a call from the page with the key enqueues."""
    api = f"http://127.0.0.1:{stack.env['API_PORT']}"
    browser.get(api + "/docs")

    def routes(driver) -> list[str] | bool:
        script = (
            "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.innerText)"
        )
        found = [p.strip() for p in driver.execute_script(script)]
        return found if len(found) >= 5 else False

    try:
        paths = WebDriverWait(browser, 60, poll_frequency=1).until(routes)
    except TimeoutException:
        pytest.fail(f"Swagger UI rendered no routes; page text:\n{browser.page_source[:2000]}")
    assert sorted(p.replace("\u200b", "") for p in paths) == [
        "/pipelines", "/tasks/count-primes", "/tasks/fetch", "/tasks/wait-on-api", "/tasks/{task_id}"
    ]  # fmt: skip
    call = """
        const done = arguments[arguments.length - 1];
        fetch('/tasks/count-primes', {method: 'POST', body: '{"limit": 1000}', headers: {
            'Content-Type': 'application/json', 'Authorization': 'Bearer ' + arguments[0]}})
          .then(r => r.json().then(j => done([r.status, j.queue])));
    """
    assert browser.execute_async_script(call, stack.secret("api_key")) == [202, "cpu"]
