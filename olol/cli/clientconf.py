"""Where the CLI finds a running proxy: ``--url``, else ``$OLOL_URL``, else the
``listen`` address of the config file (``$OLOL_CONFIG``, else
``~/.config/olol/olol.toml``, else ``/etc/olol/olol.toml``), else the default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from olol.address import connect_host, format_address, parse_address
from olol.context import DEFAULT_LISTEN


def config_paths() -> list[Path]:
    env = os.environ.get("OLOL_CONFIG")
    if env:
        return [Path(env).expanduser()]
    return [Path("~/.config/olol/olol.toml").expanduser(), Path("/etc/olol/olol.toml")]


def url_from_listen(listen: str) -> str:
    """The URL of a proxy that listens on ``listen`` (a wildcard is reached on loopback).

    :raises ValueError: not a listen address."""
    host, port = parse_address(listen, what="listen address", default_port=11435,
                               default_host="127.0.0.1", listen=True)
    return f"http://{format_address(connect_host(host), port)}"


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
            try:
                return url_from_listen(listen)
            except ValueError:
                continue
    return url_from_listen(DEFAULT_LISTEN)


def unreachable(url: str, exc: BaseException) -> str:
    """A short sentence for a proxy that did not answer: the cause in plain words and
    what to try, instead of the HTTP library's chain of wrapped errors."""
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        cause = "connection refused: is the proxy running?"
    elif "timed out" in text.lower() or "Timeout" in type(exc).__name__:
        cause = "no answer in time"
    elif "Name or service not known" in text or "nodename nor servname" in text:
        cause = "unknown host name"
    elif "SSL" in text or "certificate" in text:
        cause = "TLS failed: " + text[-160:]
    else:
        cause = text[-160:]
    return (f"cannot reach the olol proxy at {url} ({cause}); start it with `olol proxy`, "
            "or point --url or $OLOL_URL at it")
