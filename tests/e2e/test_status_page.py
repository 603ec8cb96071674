"""Issue 16: the status page in a real browser (Debian's chromium, headless, driven by
Playwright with the system Chromium; nothing is downloaded and the page loads nothing from
outside). A cistern that pulled real images through the stand-in shows numbers equal to its
metrics, a fill in progress as a moving bar, finds a repository by search, and on the main
listener (`http.statuspage`) hides a repository the viewer may not pull. A screenshot is saved
to target/status-page.png (CI keeps it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from mirror import Mirror
from dockerd import offline_client_env
from skopeo import SKOPEO_BIN, copy_through_mirror, write_registries_conf
from throttle import Throttle

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "..", "target", "status-page.png")
# library/big's 256 MiB layer at this rate takes ~10 s: long enough to watch its bar move.
FILL_RATE = 24 << 20
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("no /usr/bin/chromium: apt-get install chromium (tests/e2e/install.sh does)")
    from playwright.sync_api import sync_playwright
    profile = tempfile.mkdtemp(prefix="cistern-e2e-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1400})
        # Loopback only: any other request the page made would fail the test.
        outside = []
        context.route(lambda url: not url.startswith("http://127.0.0.1:"),
                      lambda route: (outside.append(route.request.url), route.abort()))
        yield context
        context.close()
        assert not outside, f"the page asked for something outside loopback: {outside}"
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def mirrors(cistern_bin, hub, tmp_path_factory):
    """A store that holds library/busybox, library/alpine and private/secret (pulled with the
    stored credentials by a first cistern), then a cistern on that store whose access config
    denies private/*, with the status page on its main listener, behind a throttled upstream."""
    store = str(tmp_path_factory.mktemp("status-store"))
    driver = f"  filesystem:\n    rootdirectory: {store}\n"
    credentials = (hub.user, hub.password)
    with Mirror.cistern(cistern_bin, hub.registry_url, credentials=credentials, storage_driver=driver) as first:
        conf = write_registries_conf(str(tmp_path_factory.mktemp("conf") / "registries.conf"), first.host)
        for image in ["library/busybox:latest", "library/alpine:latest", "private/secret:1.0"]:
            copy_through_mirror(conf, image, str(tmp_path_factory.mktemp("copy")))
    with Throttle(hub.registry_host, FILL_RATE) as relay, Mirror.cistern(
            cistern_bin, relay.url, credentials=credentials, storage_driver=driver,
            extra_config={"access": {"repositories": {"deny": ["private/*"]}}},
            extra_env={"REGISTRY_HTTP_STATUSPAGE": "true"}) as mirror:
        conf = write_registries_conf(str(tmp_path_factory.mktemp("conf") / "registries.conf"), mirror.host)
        yield mirror, conf, tmp_path_factory


def wait_for_value(page, selector: str, expected: float):
    page.wait_for_function(
        "([s, v]) => { const e = document.querySelector(s); return e && Number(e.dataset.value) === v; }",
        arg=[selector, expected], timeout=TIMEOUT_MS)


def test_the_status_page_in_a_browser(browser, mirrors):
    mirror, conf, tmp = mirrors
    copy_through_mirror(conf, "library/busybox:latest", str(tmp.mktemp("copy")))  # warm: hits
    # A cold pull of library/big, left running: its layer's fill is what the bar shows.
    big = subprocess.Popen([SKOPEO_BIN, "--insecure-policy", "--registries-conf", conf, "copy", "--all",
                            "docker://docker.io/library/big:latest", f"dir:{tmp.mktemp('big')}"],
                           env=offline_client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = browser.new_page()
        page.goto(f"{mirror.debug_url}/")
        # A fill in progress: its row appears and its bar moves.
        row = page.wait_for_selector("tr.fill", timeout=TIMEOUT_MS)
        first = int(row.get_attribute("data-bytes"))
        first_width = page.eval_on_selector("tr.fill .bar span", "e => e.style.width")
        page.wait_for_function(
            "b => { const r = document.querySelector('tr.fill'); return r && Number(r.dataset.bytes) > b; }",
            arg=first, timeout=TIMEOUT_MS)
        later_width = page.eval_on_selector("tr.fill .bar span", "e => e.style.width")
        assert later_width != first_width, (first_width, later_width)
        assert "library/big" in page.text_content("#fills")
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        print(f"\nstatus page screenshot: {os.path.abspath(SCREENSHOT)}")
        out, _ = big.communicate(timeout=600)
        assert big.returncode == 0, out
    finally:
        if big.poll() is None:
            big.kill()
            big.wait()

    # Quiet now: the numbers on the page equal the metrics.
    requests = mirror.metric_sum("cistern_cache_requests_total")
    from_cache = mirror.metric_sum("cistern_served_bytes_total", source="cache")
    from_upstream = mirror.metric_sum("cistern_served_bytes_total", source="upstream")
    assert requests > 0 and from_cache > 0 and from_upstream > 0
    wait_for_value(page, "#requests", requests)
    wait_for_value(page, "#bytes-cache", from_cache)
    wait_for_value(page, "#bytes-upstream", from_upstream)
    page.wait_for_selector("tr.fill", state="detached", timeout=TIMEOUT_MS)
    # The operator sees every repository, the private one too.
    page.wait_for_selector('tr.repository[data-name="private/secret"]', timeout=TIMEOUT_MS)

    # Search finds a repository, and only what matches.
    page.fill("#search", "busy")
    page.wait_for_function(
        "() => [...document.querySelectorAll('tr.repository')].map(r => r.dataset.name).join() === 'library/busybox'",
        timeout=TIMEOUT_MS)
    assert "q=busy" in page.url

    # The main listener's page: the viewer may not pull private/*, so never sees it.
    viewer = browser.new_page()
    viewer.goto(f"{mirror.url}/_cistern/")
    viewer.wait_for_selector('tr.repository[data-name="library/big"]', timeout=TIMEOUT_MS)
    names = viewer.eval_on_selector_all("tr.repository", "rows => rows.map(r => r.dataset.name)")
    assert "library/busybox" in names and "library/alpine" in names, names
    assert "private/secret" not in names, names
    assert "private/secret" not in viewer.content()
    viewer.fill("#search", "secret")
    viewer.wait_for_function("() => document.querySelectorAll('tr.repository').length === 0", timeout=TIMEOUT_MS)
    wait_for_value(viewer, "#requests", mirror.metric_sum("cistern_cache_requests_total"))
