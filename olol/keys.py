"""API keys for the front door: ``KeyStore`` over the ``api_keys`` table.

A key is a random token (``olol-`` + 43 URL-safe characters, 256 bits) shown once at
creation. The store keeps only its SHA-256 digest: a slow password hash buys nothing for
a high-entropy random token, and a fast one keeps verification cheap on every request.
Digests are compared with :func:`hmac.compare_digest`.

A key carries ``admin`` (may use the admin API) and ``default_priority`` (the queue
priority of its requests when they send no ``X-OLOL-Priority`` header).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from olol.store.database import iso_utc
from olol.store.schema import Field, TableSchema

if TYPE_CHECKING:
    from olol.interfaces import Store

TABLE = "api_keys"
TOKEN_PREFIX = "olol-"
#: Characters of the token kept in clear for listing (``olol-`` + 7).
PREFIX_LEN = 12
#: ``last_used_at`` is written at most this often per key (each write is an fsync).
LAST_USED_WRITE_INTERVAL_S = 60.0
MAX_NAME_LEN = 100

API_KEYS_SCHEMA = TableSchema(
    TABLE,
    {
        "id": Field("str", required=True),
        "name": Field("str", required=True),
        "hash": Field("str", required=True),
        "prefix": Field("str", required=True),
        "admin": Field("bool", required=True),
        "default_priority": Field("int", required=True),
        "revoked": Field("bool", required=True),
        "created_at": Field("str", nullable=True),
        "last_used_at": Field("str", nullable=True),
    },
)


@dataclass(frozen=True)
class KeyInfo:
    """What the front door knows about a verified key (never the token or its hash)."""

    id: str
    name: str
    prefix: str
    admin: bool
    default_priority: int
    revoked: bool
    created_at: str | None
    last_used_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(doc: dict) -> KeyInfo:
    return KeyInfo(
        id=doc["id"],
        name=doc["name"],
        prefix=doc["prefix"],
        admin=bool(doc.get("admin")),
        default_priority=int(doc.get("default_priority") or 0),
        revoked=bool(doc.get("revoked")),
        created_at=doc.get("created_at"),
        last_used_at=doc.get("last_used_at"),
    )


class KeyStore:
    """Create, verify, list and revoke API keys.

    :param db: a :class:`~olol.store.database.DatabaseManager`; the ``api_keys`` table is
        registered on it.
    :param clock: returns the current time (seconds); stamps ``last_used_at``.
    """

    def __init__(self, db: Store, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        db.register_table(API_KEYS_SCHEMA)
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()  # apart: requests' checks never wait on it
        self._last_write: dict[str, float] = {}

    def create(
        self, name: str, admin: bool = False, default_priority: int = 0
    ) -> tuple[str, str]:
        """Make a key; returns ``(key_id, plaintext)``. The plaintext is not stored.

        :raises ValueError: empty or over-long name, non-integer priority.
        """
        name = (name or "").strip()
        if not name:
            raise ValueError("a key needs a name")
        if len(name) > MAX_NAME_LEN:
            raise ValueError(f"key name longer than {MAX_NAME_LEN} characters")
        if isinstance(default_priority, bool) or not isinstance(default_priority, int):
            raise ValueError("default_priority must be an integer")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + uuid.uuid4().hex[:16]
        folded = name.casefold()
        with self._create_lock:  # two creations of one name at once: one is refused
            taken = next((k.name for k in self.list(include_revoked=False)
                          if k.name.casefold() == folded), None)
            if taken is not None:
                raise ValueError(f"an active key is already named {taken!r}: names tell "
                                 "keys apart in logs and listings, whatever their case")
            self.db.insert(
                TABLE,
                {
                    "id": key_id,
                    "name": name,
                    "hash": token_digest(token),
                    "prefix": token[:PREFIX_LEN],
                    "admin": bool(admin),
                    "default_priority": int(default_priority),
                    "revoked": False,
                    "last_used_at": None,
                },
            )
        return key_id, token

    def verify(self, token: str | None, *, touch: bool = True) -> KeyInfo | None:
        """The key a token belongs to, or ``None`` (unknown, malformed or revoked).

        ``touch=False`` does not record the use (no store write: the front door's
        header check runs on the HTTP I/O thread, the request's own check records it)."""
        if not token or not isinstance(token, str) or len(token) > 256:
            return None
        digest = token_digest(token)
        prefix = token[:PREFIX_LEN]
        candidates = self.db.search(TABLE, {"prefix": prefix})
        found = None
        for doc in candidates:
            if hmac.compare_digest(doc["hash"], digest):
                found = doc
        if found is None or found.get("revoked"):
            return None
        if touch:
            self._touch(found)
        return _info(found)

    def _touch(self, doc: dict) -> None:
        now = self.clock()
        with self._lock:
            last = self._last_write.get(doc["id"])
            if last is not None and now - last < LAST_USED_WRITE_INTERVAL_S:
                return
            self._last_write[doc["id"]] = now
        self.db.update(TABLE, {"last_used_at": iso_utc(now)}, {"id": doc["id"]})
        doc["last_used_at"] = iso_utc(now)

    def get(self, key_id: str) -> KeyInfo | None:
        doc = self.db.search_one(TABLE, {"id": key_id})
        return None if doc is None else _info(doc)

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key, oldest first."""
        docs = self.db.all(TABLE)
        infos = [_info(doc) for doc in docs]
        if not include_revoked:
            infos = [info for info in infos if not info.revoked]
        return sorted(infos, key=lambda info: (info.created_at or "", info.id))

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no such key exists (revoking twice is True)."""
        ids = self.db.update(TABLE, {"revoked": True}, {"id": key_id})
        return bool(ids)

    def count(self, active_only: bool = True) -> int:
        if active_only:
            return self.db.count(TABLE, {"revoked": False})
        return self.db.count(TABLE)
