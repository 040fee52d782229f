"""The dashboard in a real browser (headless Chromium), against a live proxy and two
simulated nodes: log in, see the nodes and their models, start a pull and watch its
progress move, stop a simulator and see its node turn unhealthy with the reason.
Skipped where chromium, chromedriver or selenium are missing (CI installs them)."""

from __future__ import annotations

import pytest

from tests.ui import browser
from tests.ui.conftest import start_live, stop_live

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(browser.missing() is not None, reason=browser.missing() or "")]

PULLED = "qwen2.5:0.5b"  # 398 MB: about 8 s at the simulators' pull speed


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    cluster = start_live(tmp_path_factory.mktemp("ui-browser"), nodes=2, keys_enabled=True,
                         sim_kw={"pull_bytes_per_second": 50e6})
    yield cluster
    stop_live(cluster)


@pytest.fixture(scope="module")
def driver():
    d = browser.start_browser()
    yield d
    d.quit()


def rows(driver, css: str) -> dict[str, object]:
    from selenium.webdriver.common.by import By

    return {e.get_attribute("data-node") or e.get_attribute("data-model"): e
            for e in driver.find_elements(By.CSS_SELECTOR, css)}


def test_log_in_and_see_both_nodes_and_their_models(live, driver, tmp_path):
    from selenium.webdriver.common.by import By

    browser.log_in(driver, live.url, "olol-wrong-key")
    error = driver.find_element(By.ID, "login-error").text
    assert "not valid" in error
    browser.log_in(driver, live.url, live.admin_key)
    assert driver.current_url.endswith("/olol/ui/nodes")
    addresses = {a.address for a in live.agents}
    browser.wait_for(driver, lambda d: set(rows(d, "#nodes-table tr[data-node]")) == addresses,
                     what="both nodes listed")
    for row in rows(driver, "#nodes-table tr[data-node]").values():
        assert row.get_attribute("data-state") == "healthy"
        assert "4" in row.find_element(By.CSS_SELECTOR, "td[data-label=Slots]").text
    driver.find_element(By.ID, "nav-models").click()
    matrix = browser.wait_for(driver, lambda d: d.find_element(By.ID, "matrix"))
    header = [th.get_attribute("title") for th in matrix.find_elements(By.CSS_SELECTOR, "thead th")]
    assert header[1:] == sorted(addresses)
    models = rows(driver, "#matrix tr[data-model]")
    for name in ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"):
        cells = models[name].find_elements(By.CSS_SELECTOR, "td")
        assert [c.get_attribute("class") in ("p", "l") for c in cells] == [True, True]
    for view in ("nodes", "queue", "models", "traffic", "maintenance"):
        driver.find_element(By.ID, f"nav-{view}").click()
        browser.wait_for(driver, lambda d, v=view: d.find_element(By.TAG_NAME, "body")
                         .get_attribute("data-view") == v)
        assert driver.save_screenshot(str(tmp_path / f"{view}.png"))


def test_a_pull_started_in_the_page_shows_its_progress_moving(live, driver):
    from selenium.webdriver.common.by import By

    node = live.agents[0].address
    live.proxy.registry.remove_model(PULLED, [node], force=True)
    driver.get(live.url + "/olol/ui/models")
    driver.find_element(By.ID, "pull-model").send_keys(PULLED)
    driver.find_element(By.ID, "pull-nodes").send_keys(node)
    driver.find_element(By.ID, "pull-start").click()
    seen: list[int] = []

    def moved(d) -> bool:
        for li in d.find_elements(By.CSS_SELECTOR, "#pulls li"):
            if li.get_attribute("data-model") == PULLED and li.get_attribute("data-node") == node:
                value = li.get_attribute("data-progress")
                if value and (not seen or int(value) != seen[-1]):
                    seen.append(int(value))
        return len(seen) >= 2 and seen[-1] > seen[0]

    browser.wait_for(driver, moved, timeout=30, what="pull progress moving")
    note = driver.find_element(By.ID, "note").text
    assert f"pulling {PULLED} on {node}" in note

    def pulled(d) -> bool:
        row = rows(d, "#matrix tr[data-model]").get(PULLED)
        if row is None:
            return False
        cells = row.find_elements(By.CSS_SELECTOR, "td")
        columns = [th.get_attribute("title") for th in
                   d.find_elements(By.CSS_SELECTOR, "#matrix thead th")][1:]
        return cells[columns.index(node)].get_attribute("class") in ("p", "l")

    browser.wait_for(driver, pulled, timeout=40, what="pull finished in the matrix")


def test_a_stopped_simulator_turns_its_node_unhealthy_with_the_reason(live, driver):
    from selenium.webdriver.common.by import By

    driver.get(live.url + "/olol/ui/nodes")
    victim = live.agents[1].address
    live.sims[1].stop()

    def unhealthy(d):
        row = rows(d, "#nodes-table tr[data-node]").get(victim)
        if row is None or row.get_attribute("data-state") != "unhealthy":
            return None
        return row.find_element(By.CSS_SELECTOR, ".reason").text

    reason = browser.wait_for(driver, unhealthy, timeout=30, what="node turns unhealthy")
    assert "Ollama not reachable" in reason
    other = rows(driver, "#nodes-table tr[data-node]")[live.agents[0].address]
    assert other.get_attribute("data-state") == "healthy"
    assert driver.find_element(By.ID, "nodes-healthy").text == "1"
    # it updated without a reload: the page counted its refreshes
    updates = driver.find_element(By.TAG_NAME, "body").get_attribute("data-updates")
    assert int(updates or 0) >= 1
