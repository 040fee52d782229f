"""``WorkerConfig``: the node agent's settings, one typed schema as for the proxy.

The TOML file (``olol worker --config FILE``), the ``OLOL_WORKER_<KEY>`` environment
variables, the ``olol worker`` flags and the worker section of docs/config.md are all
derived from it, in the same way as ProxyConfig (``olol.context``): defaults, then the
file, then the environment, then the flags. A key the file does not know, or a value
of the wrong type, stops the start with the key's name. Secrets are read from files
(``token_file``, ``admin_token_file``) or systemd credentials, never from argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from olol.context import opt

ENV_PREFIX = "OLOL_WORKER_"
SIZE_KEYS = ("disk_budget", "memory_budget")


@dataclass
class WorkerConfig:
    """The settings of ``olol worker`` (see :class:`olol.agent.agent.AgentConfig` for what
    the running agent receives)."""

    listen: str = opt("127.0.0.1:50051", "HOST:PORT the proxy connects to; an address "
                      "other than loopback needs TLS (or `insecure_bind_any`).")
    ollama_url: str = opt("http://127.0.0.1:11434", "The local Ollama's API.")
    token_file: str | None = opt(None, "File holding the bearer token required on every "
                                 "call (default: the systemd credential `token`, if any).")
    admin_token_file: str | None = opt(None, "File holding the bearer token for model "
                                       "commands (default: the systemd credential "
                                       "`admin-token`, if any).")
    tls_cert: str | None = opt(None, "Server certificate (PEM); with `tls_key`, turns TLS on.")
    tls_key: str | None = opt(None, "Server private key (PEM).")
    tls_client_ca: str | None = opt(None, "CA that client certificates must chain to "
                                    "(PEM): mutual TLS.")
    parallel: int = opt(4, "The local Ollama's parallel slots (its OLLAMA_NUM_PARALLEL).")
    models_dir: str | None = opt(None, "Ollama's models folder, for its disk use "
                                 "(default: Ollama's).")
    disk_budget: str | None = opt(None, "Declared disk for models, reported instead of the "
                                  "measured disk (a size: `200G`, `512Mi`, bytes).")
    memory_budget: str | None = opt(None, "Declared memory for loaded models, reported "
                                    "instead of the measured memory (a size).")
    grace: float = opt(30.0, "Seconds running calls may take to finish on SIGTERM.")
    insecure_bind_any: bool = opt(False, "Allow an address other than loopback without TLS.")


def convert(key: str, value: Any) -> Any:
    """A file's or the environment's value for ``key``, checked: sizes must parse
    (they stay text here; :func:`size_of` turns them into bytes)."""
    if key in SIZE_KEYS:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            size_of(value)  # raises ValueError with the reason
    return value


def size_of(value: Any) -> int | None:
    """A size setting in bytes (None: not set)."""
    from olol.agent.hardware import parse_bytes

    if value is None:
        return None
    number = value if isinstance(value, int) else parse_bytes(value)
    if number <= 0:
        raise ValueError(f"must be > 0: {value!r}")
    return number
