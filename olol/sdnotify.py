"""systemd's service notifications (``sd_notify``) without a dependency.

Under ``Type=notify`` the proxy sends ``READY=1`` once it serves, ``STOPPING=1`` when
it begins to shut down, and, when the unit sets ``WatchdogSec=``, ``WATCHDOG=1`` from a
named thread at half that interval for as long as a health check passes (systemd
restarts it otherwise). Outside systemd (no ``$NOTIFY_SOCKET``) everything here is a
no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False when there is
    none or it cannot be reached."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc)
        return False


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None when the
    watchdog is off or meant for another process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog while ``healthy()`` is true (thread ``olol-watchdog``)."""

    def __init__(self, healthy: Callable[[], bool], interval_s: float,
                 env: Mapping[str, str] | None = None):
        self.healthy = healthy
        self.interval_s = interval_s
        self.env = env
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="olol-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(timeout=self.interval_s):
            try:
                ok = self.healthy()
            except Exception:  # noqa: BLE001 - an unhealthy check: no ping, systemd acts
                log.exception("watchdog health check failed")
                ok = False
            if ok:
                notify("WATCHDOG=1", self.env)
            else:
                log.warning("watchdog: not healthy, not pinging systemd")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)


def start_service_notifications(healthy: Callable[[], bool], status: str = "",
                                env: Mapping[str, str] | None = None) -> Watchdog | None:
    """``READY=1`` (plus a status line), and the watchdog when the unit asks for one."""
    notify("READY=1" + (f"\nSTATUS={status}" if status else ""), env)
    interval = watchdog_interval(env)
    return Watchdog(healthy, interval, env).start() if interval else None
