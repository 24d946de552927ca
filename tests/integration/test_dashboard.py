"""The head's dashboard in a real headless Chromium, and who may read it over HTTP."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.lifecycle import free_port_base
from common.security import Join
from tests.helpers import wait_until
from user_client import LocalCluster

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1050")


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def exposed():
    """A secured head whose HTTP server binds every interface (0.0.0.0), so it asks for tokens."""
    port = free_port_base(count=1)
    cluster = LocalCluster(1, http_port=port, head_args=["--http-host", "0.0.0.0"], heartbeat_interval=0.2,
                           dead_after=1.5, log_level="info").start()
    cluster.url = f"http://127.0.0.1:{port}"
    yield cluster
    cluster.stop()


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven through chromedriver; skipped where Debian's packages are absent."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(chromedriver).exists():
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def progress_of(driver, job_id: str) -> tuple[float, float] | None:
    return driver.execute_script(
        "const bar = document.querySelector(`tr[data-job-id='${arguments[0]}'] progress`);"
        "return bar ? [bar.value, bar.max] : null;", job_id)


def test_dashboard_lists_providers_and_shows_a_job_moving(make_cluster, browser):
    port = free_port_base(count=1)
    cluster = make_cluster(2, http_port=port)
    browser.get(f"http://127.0.0.1:{port}/")
    names = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#providers tbody tr td:first-child')].map(td => td.textContent)")
    assert sorted(wait_until(lambda: len(n := names()) == 2 and n, timeout=20)) == ["local-0", "local-1"]
    links = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#providers tbody tr td:nth-child(4)')].map(td => td.textContent)")
    # once ready (a joining provider has not proved anything yet), both read the head's files: nothing to measure
    assert wait_until(lambda: (n := links()) == ["this machine", "this machine"] and n, timeout=20) == [
        "this machine", "this machine"]
    with cluster.client() as c:
        job = c.submit("noop", {"shards": 40, "sleep": 0.2})
        first = wait_until(lambda: (p := progress_of(browser, job.id)) and 0 < p[0] < p[1] and p, timeout=10)
        assert first[1] == 40
        later = wait_until(lambda: (p := progress_of(browser, job.id)) and p[0] > first[0] and p, timeout=10)
        assert later[0] <= 40
        cells = browser.execute_script(
            "return [...document.querySelectorAll(`tr[data-job-id='${arguments[0]}'] td`)].map(td => td.textContent)",
            job.id)
        assert cells[1:4] == ["noop", "anonymous", "running"]
        wait_until(lambda: browser.execute_script(  # the tasks-per-second chart has a line by now
            "return document.querySelector('#card-tps .value').textContent !== '–'"), timeout=5)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert job.wait(timeout=30)["status"] == "succeeded"

    browser.get(f"http://127.0.0.1:{port}/#job/{job.id}")
    events = lambda: browser.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#events tbody tr td:nth-child(2)')].map(td => td.textContent)")
    seen = wait_until(lambda: "finish" in (e := events()) and e, timeout=10)
    assert seen[0] == "submit" and seen.count("result") == 40
    assert browser.execute_script("return document.getElementById('job-state').textContent") == "succeeded"
    lanes, spans = browser.execute_script("const d = document.getElementById('timeline').dataset;"
                                          "return [Number(d.lanes), Number(d.spans)]")
    assert lanes == 2 and spans >= 40  # one lane per provider, a bar per shard attempt
    browser.save_screenshot(str(ARTIFACTS / "dashboard-job.png"))
    assert console_errors(browser) == []


def test_a_non_local_bind_asks_for_an_admin_or_viewer_token(exposed):
    base = exposed.url
    admin = Join.decode(exposed.admin_join).token
    viewer = Join.decode(exposed.invite("viewer", "ops")).token
    client = Join.decode(exposed.invite("client", "alice")).token
    refused_before = http_auth_failures(base, admin)

    for path in ("/", "/api/state", "/metrics", "/api/jobs/abc/events"):
        status, headers, body = get(base + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert b"needs a token" in body
    assert get(base + "/api/state", "x.y.z")[0] == 401
    assert get(base + "/app.js")[0] == 200  # static code, no cluster data: a browser loads it before the token

    status, _, body = get(base + "/api/state", admin)
    assert status == 200 and json.loads(body)["epoch"]
    assert get(base + "/metrics", viewer)[0] == 200
    assert get(f"{base}/?token={viewer}")[0] == 200
    status, _, body = get(base + "/api/state", client)
    assert status == 403 and b"'client' may not read" in body
    assert get(base + "/api/state", admin, method="POST")[0] == 405  # read-only

    exposed.keystore.revoke("ops")
    status, _, body = get(base + "/api/state", viewer)
    assert status == 401 and b"revoked" in body
    assert http_auth_failures(base, admin) - refused_before == 4 + 1 + 1 + 1  # none, forged, client role, revoked


def http_auth_failures(base: str, token: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(get(base + "/metrics", token)[2].decode()):
        if family.name == "zcompute_auth_failures":
            return next(s.value for s in family.samples if s.labels == {"kind": "http"})
    raise AssertionError("no zcompute_auth_failures in /metrics")


def test_the_browser_carries_a_viewer_token_from_the_address(exposed, browser):
    viewer = Join.decode(exposed.invite("viewer", "ops-browser")).token
    browser.get(f"{exposed.url}/?token={viewer}")
    wait_until(lambda: browser.execute_script(
        "return document.querySelector('#providers tbody td')?.textContent === 'local-0'"), timeout=10)
    assert "token" not in browser.current_url  # moved out of the address bar (and out of the history)
    assert console_errors(browser) == []
