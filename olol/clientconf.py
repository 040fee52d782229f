"""Where the CLI finds a running proxy: ``--url``, else ``$OLOL_URL``, else the
``listen`` address of the config file (``$OLOL_CONFIG``, else
``~/.config/olol/olol.toml``, else ``/etc/olol/olol.toml``), else the default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from olol.context import DEFAULT_LISTEN


def config_paths() -> list[Path]:
    env = os.environ.get("OLOL_CONFIG")
    if env:
        return [Path(env).expanduser()]
    return [Path("~/.config/olol/olol.toml").expanduser(), Path("/etc/olol/olol.toml")]


def url_from_listen(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def proxy_url(explicit: str | None = None) -> str:
    if explicit:
        return explicit.rstrip("/")
    env = os.environ.get("OLOL_URL")
    if env:
        return env.rstrip("/")
    for path in config_paths():
        try:
            with open(path, "rb") as fh:
                listen = tomllib.load(fh).get("listen")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(listen, str) and ":" in listen:
            return url_from_listen(listen)
    return url_from_listen(DEFAULT_LISTEN)
