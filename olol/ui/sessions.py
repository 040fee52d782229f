"""Dashboard log-ins: a bounded table of sessions in RAM.

A session is made when an admin key is typed into the log-in form. The browser keeps
only a random token in an HttpOnly, SameSite=Strict cookie (the key itself never
leaves the form post); the table maps the token's digest to the key's id and to the
session's CSRF token. Every request re-reads the key, so a revoked or demoted key ends
its sessions at once. Sessions expire ``ttl_s`` after log-in; past ``max_sessions``
the oldest is dropped. A restart forgets every session (log in again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Session:
    key_id: str
    key_name: str
    csrf: str
    expires: float


class SessionStore:
    """Sessions by cookie token.

    :param clock: seconds (the proxy's clock).
    :param ttl_s: lifetime of a session.
    :param max_sessions: sessions kept at once (the oldest goes first).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, ttl_s: float = 12 * 3600.0,
                 max_sessions: int = 1000) -> None:
        self.clock = clock
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        #: the CSRF token of pages served with keys disabled (no session then)
        self.open_csrf = secrets.token_urlsafe(32)

    def create(self, key_id: str, key_name: str) -> tuple[str, Session]:
        """A new session: ``(cookie token, session)``."""
        token = secrets.token_urlsafe(32)
        session = Session(key_id, key_name, secrets.token_urlsafe(32),
                          self.clock() + self.ttl_s)
        with self._lock:
            self._sessions[_digest(token)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie token (None: unknown or expired)."""
        if not token or len(token) > 200:
            return None
        digest = _digest(token)
        with self._lock:
            session = self._sessions.get(digest)
            if session is not None and session.expires <= self.clock():
                del self._sessions[digest]
                session = None
        return session

    def end(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            return self._sessions.pop(_digest(token), None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def same_token(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given), expected)
