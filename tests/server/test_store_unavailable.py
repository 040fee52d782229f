"""The front door when the store cannot be reached: 503 in the API's own shape (never a
500 or a traceback), and service again once the database is back."""

from __future__ import annotations

import requests

from olol.keys import KeyStore
from olol.store import PostgresStore
from tests.server.conftest import build_ctx, serve
from tests.support import wait_until

MESSAGE = "the store is unavailable; try again later"


def test_an_unreachable_or_closed_store_answers_503(pg_own_server):
    store = PostgresStore(pg_own_server.create_database("olol"), min_size=1,
                          connect_timeout=0.5)
    ctx = build_ctx([], keys_enabled=True)
    ctx.keys = KeyStore(store, ctx.clock)  # every request reads its key from PostgreSQL
    _, token = ctx.keys.create("user")
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with serve(ctx) as served:
            tags, models = f"{served.url}/api/tags", f"{served.url}/v1/models"
            assert requests.get(tags, headers=auth, timeout=10).status_code == 200
            pg_own_server.stop()
            r = requests.get(tags, headers=auth, timeout=10)
            assert r.status_code == 503
            assert r.json() == {"error": MESSAGE}
            assert r.headers["Retry-After"] == "1"
            r = requests.get(models, headers=auth, timeout=10)
            assert r.status_code == 503
            assert r.json()["error"]["message"] == MESSAGE
            pg_own_server.start()
            assert wait_until(lambda: requests.get(tags, headers=auth, timeout=10)
                              .status_code == 200, timeout=60, step=0.2)
            store.close()  # shutting down: the same 503
            r = requests.get(tags, headers=auth, timeout=10)
            assert r.status_code == 503 and r.json() == {"error": MESSAGE}
    finally:
        store.close()
