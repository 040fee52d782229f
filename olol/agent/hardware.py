"""Hardware report of an inference host: CPU, memory, disk (psutil) and GPUs (pynvml).

Cheap by design: CPU load comes from psutil's non-blocking sampling (the
percentage since the previous call), NVML is initialised once per process on
first use, and a field a card does not support is simply left out. No NVML, no
driver or no GPU gives an empty GPU list with the reason, never an error.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

_LOG = logging.getLogger(__name__)


def default_models_dir() -> Path:
    """Ollama's models folder: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env) if env else Path.home() / ".ollama" / "models"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class GpuSnapshot:
    """The GPU part of the report; ``gpus`` holds one dict per card (absent keys = unsupported)."""

    gpus: list[dict[str, Any]] = field(default_factory=list)
    driver_version: str = ""
    cuda_version: str = ""
    unavailable_reason: str = ""


class NvmlProbe:
    """Reads GPUs through pynvml; ``nvmlInit`` runs once, lazily, on the first read.

    :param nvml: the pynvml module (injectable for tests); imported on first use when None.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._failure: str | None = None
        self._driver = ""
        self._cuda = ""

    def _init(self) -> None:
        if self._initialised or self._failure is not None:
            return
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - any NVML failure means "no GPU report"
            self._failure = f"NVML unavailable: {exc or type(exc).__name__}"
            _LOG.info("no GPU report: %s", self._failure)
            return
        self._initialised = True
        self._driver = _text(self._optional(self._nvml.nvmlSystemGetDriverVersion)) or ""
        cuda = self._optional(self._nvml.nvmlSystemGetCudaDriverVersion)
        if isinstance(cuda, int) and cuda > 0:
            self._cuda = f"{cuda // 1000}.{(cuda % 1000) // 10}"

    def _optional(self, fn: Any, *args: Any) -> Any:
        """Call an NVML function; any NVML error (NotSupported included) gives None."""
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            self._init()
            if self._failure is not None:
                return GpuSnapshot(unavailable_reason=self._failure)
            nvml = self._nvml
            count = self._optional(nvml.nvmlDeviceGetCount)
            if not count:
                return GpuSnapshot(
                    driver_version=self._driver,
                    cuda_version=self._cuda,
                    unavailable_reason="no GPU found by NVML",
                )
            gpus = []
            for index in range(count):
                handle = self._optional(nvml.nvmlDeviceGetHandleByIndex, index)
                if handle is None:
                    continue
                gpus.append(self._read_gpu(index, handle))
            return GpuSnapshot(gpus=gpus, driver_version=self._driver, cuda_version=self._cuda)

    def _read_gpu(self, index: int, handle: Any) -> dict[str, Any]:
        nvml = self._nvml
        gpu: dict[str, Any] = {
            "index": index,
            "name": _text(self._optional(nvml.nvmlDeviceGetName, handle)) or "",
            "uuid": _text(self._optional(nvml.nvmlDeviceGetUUID, handle)) or "",
        }
        mem = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        if mem is not None:
            gpu["memory_total_bytes"] = int(mem.total)
            gpu["memory_used_bytes"] = int(mem.used)
            gpu["memory_free_bytes"] = int(mem.free)
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            gpu["gpu_utilization_percent"] = int(util.gpu)
            gpu["memory_utilization_percent"] = int(util.memory)
        temp = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        if temp is not None:
            gpu["temperature_c"] = int(temp)
        power = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        if power is not None:
            gpu["power_draw_mw"] = int(power)
        limit = self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        if limit is not None:
            gpu["power_limit_mw"] = int(limit)
        return gpu

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001 - shutting down is best effort
                    pass
                self._initialised = False


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class HardwareProbe:
    """Builds the host part of the node status (everything but Ollama and the agent).

    :param models_dir: Ollama's models folder, for the disk figures.
    :param nvml: an :class:`NvmlProbe` (one per process is enough).
    """

    def __init__(self, models_dir: Path | str | None = None, nvml: NvmlProbe | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.nvml = nvml if nvml is not None else NvmlProbe()
        self._cpu_model = _cpu_model()
        self._physical = psutil.cpu_count(logical=False) or 0
        self._logical = psutil.cpu_count(logical=True) or 0
        # The first non-blocking sample only primes psutil's counters.
        psutil.cpu_percent(interval=None, percpu=True)

    def cpu(self) -> dict[str, Any]:
        per_core = psutil.cpu_percent(interval=None, percpu=True)
        total = sum(per_core) / len(per_core) if per_core else 0.0
        load1, load5, load15 = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
        report: dict[str, Any] = {
            "model": self._cpu_model,
            "physical_cores": self._physical,
            "logical_cores": self._logical,
            "per_core_percent": [float(p) for p in per_core],
            "total_percent": float(total),
            "load_1": float(load1),
            "load_5": float(load5),
            "load_15": float(load15),
        }
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            freq = None
        if freq is not None and freq.current:
            report["frequency_mhz"] = float(freq.current)
        return report

    def memory(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        return {
            "total_bytes": int(vm.total),
            "available_bytes": int(vm.available),
            "used_bytes": int(vm.used),
            "percent": float(vm.percent),
            "swap_total_bytes": int(sw.total),
            "swap_used_bytes": int(sw.used),
            "swap_free_bytes": int(sw.free),
            "swap_percent": float(sw.percent),
        }

    def disk(self) -> dict[str, Any]:
        # The models folder may not exist yet (nothing pulled): measure the
        # nearest existing parent, which is the filesystem models will land on.
        path = self.models_dir
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            usage = psutil.disk_usage(str(probe))
        except OSError as exc:
            return {"path": str(path), "error": str(exc)}
        return {
            "path": str(path),
            "total_bytes": int(usage.total),
            "used_bytes": int(usage.used),
            "free_bytes": int(usage.free),
            "percent": float(usage.percent),
        }

    def gpu(self) -> GpuSnapshot:
        return self.nvml.snapshot()


_BYTES_MULT = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_bytes(text: str) -> int:
    """``4G`` -> 4000000000, ``512Mi`` -> 536870912, ``1000`` -> 1000 (a trailing ``B`` is ok).

    :raises ValueError: not a non-negative size.
    """
    raw = str(text).strip().upper().removesuffix("B")
    number = raw.rstrip("KMGTI")
    suffix = raw[len(number):]
    if suffix not in _BYTES_MULT:
        raise ValueError(f"bad size {text!r} (expected e.g. 4G, 800M, 512Mi, 1000000)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"bad size {text!r} (expected e.g. 4G, 800M, 512Mi, 1000000)") from None
    if value < 0 or value != value:
        raise ValueError(f"size must be >= 0, got {text!r}")
    return int(value * _BYTES_MULT[suffix])


DECLARED_BUDGET_NOTE = "declared budget"


def apply_budget(status: Any, disk_budget: int | None, memory_budget: int | None) -> None:
    """Replace measured disk/memory figures of a ``NodeStatus`` with declared budgets.

    For hosts where detection is wrong (simulated nodes, shared disks): the disk is
    ``disk_budget`` bytes minus the sizes of the models Ollama lists, the memory is
    ``memory_budget`` bytes minus the sizes of the models it has loaded. Either budget
    may be None (keep the measured figures).
    """
    if disk_budget is not None:
        # A copy shares its source's digest (and blobs): count each digest once.
        sizes = {m.digest or m.name: int(m.size) for m in status.ollama.models}
        used = min(disk_budget, sum(sizes.values()))
        disk = status.disk
        disk.total_bytes, disk.used_bytes = disk_budget, used
        disk.free_bytes = disk_budget - used
        disk.percent = 100.0 * used / disk_budget if disk_budget else 0.0
        disk.path = f"{DECLARED_BUDGET_NOTE} ({disk.path})" if disk.path else DECLARED_BUDGET_NOTE
        disk.error = ""
    if memory_budget is not None:
        used = min(memory_budget, sum(int(m.size) for m in status.ollama.loaded))
        mem = status.memory
        mem.total_bytes, mem.used_bytes = memory_budget, used
        mem.available_bytes = memory_budget - used
        mem.percent = 100.0 * used / memory_budget if memory_budget else 0.0
