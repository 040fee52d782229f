"""``close_waitress``: how the proxy's HTTP server stops (after the dispatcher's grace).

It stops accepting first (a new connection is refused, which a load balancer retries
elsewhere), serves the requests it has already received, and only then stops its
threads: waitress's own shutdown stops them before they take another task and drops
the connections of the requests still queued, with no answer.
"""

from __future__ import annotations

import socket
import threading
import time

import requests
import waitress

from olol.proxy import close_waitress


def _app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.5)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_requests_already_received_are_served_and_new_connections_refused():
    server = waitress.create_server(_app, host="127.0.0.1", port=0, threads=1,
                                    ident="olol-test")
    thread = threading.Thread(target=server.run, name="test-http", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    got: dict = {}

    def get(path: str) -> None:
        try:
            got[path] = requests.get(url + path, timeout=10).status_code
        except requests.RequestException as exc:
            got[path] = exc

    slow = threading.Thread(target=get, args=("/slow",), name="test-slow")
    slow.start()
    time.sleep(0.1)  # the only thread serves /slow
    queued = threading.Thread(target=get, args=("/queued",), name="test-queued")
    queued.start()
    deadline = time.monotonic() + 5
    while not server.task_dispatcher.queue and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.task_dispatcher.queue  # /queued waits for the thread
    closer = threading.Thread(target=close_waitress, args=(server, thread, 5.0),
                              name="test-closer")
    closer.start()
    time.sleep(0.1)
    try:
        socket.create_connection(("127.0.0.1", server.effective_port), timeout=2).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    for t in (slow, queued, closer):
        t.join(timeout=10)
    assert refused
    assert got == {"/slow": 200, "/queued": 200}
    assert not thread.is_alive()
