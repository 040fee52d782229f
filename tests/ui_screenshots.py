"""Screenshots of the dashboard for the README: ``python -m tests.ui_screenshots [DIR]``.

Starts three simulated nodes (their agents report a made-up GPU each, so the GPU
columns have something to show), a proxy with keys enabled, some traffic, a slow pull
and a stopped simulator, then saves each view (light; nodes also dark and at a phone's
width) as PNG files in DIR (default ``docs/img``). Needs chromium, chromedriver and
selenium, like the browser tests.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import ollama

from olol.agent.agent import Agent, AgentConfig
from olol.agent.hardware import GpuSnapshot, HardwareProbe
from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.sim import SimConfig, Simulator, parse_models_spec
from tests.e2e.conftest import MODELS
from tests.ui import browser

GIB = 1024**3


class DemoHardware(HardwareProbe):
    """The host's real CPU and memory, and one made-up GPU."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def gpu(self) -> GpuSnapshot:
        used = (6 + 5 * self.index) * GIB
        return GpuSnapshot(gpus=[{
            "index": 0, "name": "NVIDIA L4 (simulated)", "memory_total_bytes": 24 * GIB,
            "memory_used_bytes": used, "memory_free_bytes": 24 * GIB - used,
            "gpu_utilization_percent": 20 + 30 * self.index, "temperature_c": 48 + 6 * self.index,
        }], driver_version="550.00")


def main(out: Path) -> None:
    from selenium.webdriver.common.by import By

    why = browser.missing()
    if why:
        sys.exit(f"cannot take screenshots: {why}")
    out.mkdir(parents=True, exist_ok=True)
    sims, agents = [], []
    for i in range(3):
        sim = Simulator(SimConfig(models=parse_models_spec(MODELS), parallel=2, ttft=0.05,
                                  tokens_per_second=100, pull_bytes_per_second=20e6,
                                  response_tokens=(300, 600)),
                        host="127.0.0.1", port=0).start()
        sims.append(sim)
        agents.append(Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url, parallel=2),
                            hardware=DemoHardware(i)).start())
    with tempfile.TemporaryDirectory() as tmp:
        proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=Path(tmp),
                                  nodes=[a.address for a in agents], keys_enabled=True,
                                  health_interval_s=1.0))
        _, key = proxy.keys.create("admin", admin=True)
        proxy.start()
        driver = browser.start_browser(1280, 860)
        try:
            client = ollama.Client(host=proxy.url, headers={"Authorization": f"Bearer {key}"})

            def ask(model: str, prompt: str, tokens: int) -> None:
                for _ in client.generate(model=model, prompt=prompt, stream=True,
                                         options={"num_predict": tokens}):
                    pass

            for i in range(24):
                ask("llama3.2:1b" if i % 3 else "qwen2.5:0.5b", f"hello {i}", 24)
            busy = [threading.Thread(target=ask, name=f"demo-load-{i}", daemon=True,
                                     args=("llama3.2:1b" if i % 2 else "qwen2.5:0.5b",
                                           "a long one", 800))
                    for i in range(24)]
            for t in busy:
                t.start()
            browser.log_in(driver, proxy.url, key)

            def shot(view: str, name: str) -> None:
                driver.get(f"{proxy.url}/olol/ui/{view}")
                browser.wait_for(driver, lambda d: int(d.find_element(By.TAG_NAME, "body")
                                                       .get_attribute("data-updates") or 0) >= 1)
                driver.save_screenshot(str(out / f"ui-{name}.png"))
                print("saved", out / f"ui-{name}.png")

            shot("queue", "queue")
            sims[2].stop()  # the third node turns unhealthy
            proxy.registry.pull_model("gemma3:1b", [agents[0].address])
            browser.wait_for(driver, lambda d: not proxy.cluster.node(agents[2].address).healthy,
                             timeout=30)
            shot("models", "models")
            shot("nodes", "nodes")
            browser.color_scheme(driver, "dark")
            shot("nodes", "nodes-dark")
            browser.color_scheme(driver, "light")
            for t in busy:
                t.join(timeout=60)
            shot("traffic", "traffic")
            shot("maintenance", "maintenance")
            driver.set_window_size(390, 844)
            shot("nodes", "nodes-phone")
        finally:
            driver.quit()
            proxy.stop(grace_s=2)
            for a in agents:
                a.stop(0)
            for s in sims:
                s.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img"))
