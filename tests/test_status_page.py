"""The status page in a real browser (Debian's headless Chromium through selenium): a live
5-node network shows every member alive; a SIGKILLed node turns suspect, then dead, on the
open page without a reload."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from testnet_helpers import running_testnet

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
NODES = 5
# Suspicion (4 s at the least for 5 members) and death (the detection bound) as the page sees them.
SUSPECT_WAIT_S = 30.0
DEAD_WAIT_S = 90.0
# Where the screenshot goes for a person to look at (a CI artefact when P2PFS_ARTIFACTS is set).
ARTIFACTS = os.environ.get("P2PFS_ARTIFACTS")

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium not installed (Debian packages chromium and chromium-driver; "
           "scripts/test.sh installs them as root)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a browser or driver of its own
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def member_states(driver) -> dict[str, str]:
    """node id -> state, as the page's member table shows them now (read in one script: the
    page redraws its rows every refresh, so element handles would go stale between reads)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#members tbody tr')]"
        ".map(row => [row.dataset.nodeId, row.querySelector('td.state').textContent]))"
    )


def wait_page(driver, condition, timeout_s: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(
        lambda d: condition(member_states(d)), message=f"the page did not show {what} within {timeout_s} s"
    )


@needs_browser
def test_the_status_page_follows_a_crash_without_a_reload(tmp_path, browser):
    with running_testnet(tmp_path / "net", nodes=NODES) as net:
        ids = {name: net.node_id(name) for name in net.names}
        browser.get(net.status()["node1"].status_page)
        wait_page(browser, lambda s: len(s) == NODES and set(s.values()) == {"alive"}, 30,
                  "all 5 members alive")
        assert set(member_states(browser)) == set(ids.values())
        assert "p2pfs node" in browser.title
        assert browser.find_element("id", "node-id").text == ids["node1"][:12]
        shot = (tmp_path if ARTIFACTS is None else Path(ARTIFACTS)) / "status-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        loads_before = browser.execute_script("return performance.getEntriesByType('navigation').length")
        marker = browser.execute_script("window.p2pfsNotReloaded = true; return window.p2pfsNotReloaded")
        killed_at = time.monotonic()
        net.kill("node4")
        victim = ids["node4"]
        wait_page(browser, lambda s: s.get(victim) == "suspect", SUSPECT_WAIT_S, "node4 suspect")
        wait_page(browser, lambda s: s.get(victim) == "dead", DEAD_WAIT_S, "node4 dead")
        assert time.monotonic() - killed_at < DEAD_WAIT_S
        assert {s for n, s in member_states(browser).items() if n != victim} == {"alive"}
        # The same document all along: the flag set before the kill is still there.
        assert marker and browser.execute_script("return window.p2pfsNotReloaded === true")
        assert browser.execute_script("return performance.getEntriesByType('navigation').length") == loads_before
        events = browser.execute_script("return document.getElementById('events').textContent")
        assert "alive → suspect" in events and "→ dead" in events
        browser.save_screenshot(str(shot.with_name("status-page-after-kill.png")))
