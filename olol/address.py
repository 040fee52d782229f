"""Network addresses, one set of rules for the CLI, the config, the proxy and the agent.

``HOST:PORT``, with IPv6 hosts in brackets (``[::1]:50051``). The port is decimal,
0-65535 for an address to listen on (0 picks a free port) and 1-65535 for one to
connect to. A host is a name or an IP address; no spaces, slashes or schemes.
"""

from __future__ import annotations

import ipaddress
import re

_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def parse_address(text: object, *, what: str = "address", default_port: int | None = None,
                  default_host: str | None = None, listen: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``text``.

    :param what: the name used in messages ("listen address", "node address").
    :param default_port: the port when ``text`` has none (else a missing port is an error).
    :param default_host: the host when ``text`` is ``:PORT`` (else an error).
    :param listen: an address to bind: port 0 is allowed.
    :raises ValueError: naming ``what``, the text and what is wrong with it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    raw = text.strip()
    if "://" in raw:
        raise ValueError(f"bad {what} {raw!r}: HOST:PORT without a scheme")
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"bad {what} {raw!r}: unclosed [ around the IPv6 host")
        host, rest = raw[1:end], raw[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad {what} {raw!r}: expected [HOST]:PORT")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad {what} {raw!r}: {host!r} is not an IPv6 address") from None
    elif raw.count(":") > 1:
        raise ValueError(f"bad {what} {raw!r}: put an IPv6 host in brackets, e.g. [::1]:PORT")
    else:
        host, sep, port_text = raw.partition(":")
        if not sep:
            port_text = None
        if host and not _HOST_RE.match(host):
            raise ValueError(f"bad {what} {raw!r}: {host!r} is not a host name or address "
                             "(HOST:PORT)")
        if host.isdigit():  # the resolver would take 999999 for the IPv4 address 0.15.66.63
            hint = (f"a port alone is written :{host}" if int(host) <= 65535
                    else "ports are 0-65535")
            raise ValueError(f"bad {what} {raw!r}: expected HOST:PORT, not a bare number "
                             f"({hint})")
    if not host:
        if default_host is None:
            raise ValueError(f"bad {what} {raw!r}: no host (HOST:PORT)")
        host = default_host
    if port_text is None or port_text == "":
        if default_port is None:
            raise ValueError(f"bad {what} {raw!r}: no port (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit():
        raise ValueError(f"bad {what} {raw!r}: the port must be a number")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port <= 65535:
        raise ValueError(f"bad {what} {raw!r}: the port must be {low}-65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """The host to connect to for a server bound to ``host``: a wildcard address
    (all interfaces) is reached on loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:secret@host`` or a ``password=``
    query parameter) replaced by ``***``: for logs, pages and messages."""
    import re

    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
