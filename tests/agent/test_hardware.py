"""The hardware report on this machine (no GPU) and NVML edge cases."""

from __future__ import annotations

import psutil
import pynvml

from olol.agent.hardware import HardwareProbe, NvmlProbe


def test_report_shape_on_this_machine(tmp_path):
    probe = HardwareProbe(tmp_path / "models", NvmlProbe())
    cpu = probe.cpu()
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert cpu["logical_cores"] == psutil.cpu_count() == len(cpu["per_core_percent"])
    assert all(isinstance(p, float) and 0.0 <= p <= 100.0 for p in cpu["per_core_percent"])
    assert isinstance(cpu["load_1"], float)
    mem = probe.memory()
    assert mem["total_bytes"] > mem["available_bytes"] > 0
    disk = probe.disk()
    assert disk["path"] == str(tmp_path / "models")  # not created yet: parent measured
    assert disk["total_bytes"] > disk["free_bytes"] > 0


def test_status_through_the_agent(sim, client):
    st = client.status()
    assert set(st) >= {"hostname", "timestamp", "cpu", "memory", "gpu", "disk", "ollama", "agent"}
    assert isinstance(st["memory"]["total_bytes"], int)  # 64-bit ints stay numbers
    assert isinstance(st["gpu"]["gpus"], list)
    if not st["gpu"]["gpus"]:
        assert st["gpu"]["unavailable_reason"]
    oll = st["ollama"]
    assert oll["reachable"] is True and oll["version"]
    names = {m["name"] for m in oll["models"]}
    assert {"llama3.2:1b", "nomic-embed-text:latest"} <= names
    llama = next(m for m in oll["models"] if m["name"] == "llama3.2:1b")
    assert llama["size"] > 0 and len(llama["digest"]) == 64
    assert llama["details"]["family"] and llama["details"]["quantization_level"]
    list(client.generate({"model": "llama3.2:1b", "prompt": "x", "stream": False}))
    loaded = client.status()["ollama"]["loaded"]
    entry = next(m for m in loaded if m["name"].startswith("llama3.2"))
    assert entry["size"] > 0 and "size_vram" in entry and entry["expires_at"]
    assert st["agent"]["parallel"] == 4 and st["agent"]["uptime_seconds"] >= 0


def test_no_nvml_gives_empty_list_and_reason(monkeypatch):
    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    snap = NvmlProbe().snapshot()
    assert snap.gpus == [] and "NVML unavailable" in snap.unavailable_reason


class _FakeNvml:
    """An in-memory NVML with one card on which power and temperature are not supported."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlSystemGetDriverVersion(self):
        return "580.1"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H200"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-1234"

    def nvmlDeviceGetMemoryInfo(self, h):
        class M:
            total, used, free = 150_754_820_096, 644_939_776, 150_109_880_320
        return M

    def nvmlDeviceGetUtilizationRates(self, h):
        class U:
            gpu, memory = 3, 1
        return U

    def _unsupported(self, *a):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    nvmlDeviceGetTemperature = _unsupported
    nvmlDeviceGetPowerUsage = _unsupported

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000


def test_unsupported_fields_are_absent_and_init_runs_once():
    fake = _FakeNvml()
    probe = NvmlProbe(fake)
    snap = probe.snapshot()
    probe.snapshot()
    assert fake.inits == 1
    assert snap.driver_version == "580.1" and snap.cuda_version == "13.0"
    (gpu,) = snap.gpus
    assert gpu["name"] == "NVIDIA H200" and gpu["memory_total_bytes"] == 150_754_820_096
    assert gpu["power_limit_mw"] == 700_000
    assert "temperature_c" not in gpu and "power_draw_mw" not in gpu


