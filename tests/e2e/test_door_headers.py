"""The front door decides on headers and holds up under idle or trickling connections
(issue 9 items 3 and 4), against a live proxy (real waitress on a loopback port).

Each test talks raw HTTP over a socket so that it controls exactly which bytes are sent
and can see that the answer comes before the body.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from olol.context import ProxyConfig
from olol.keys import KeyStore
from olol.proxy import Proxy
from tests.e2e.conftest import MODELS, start_nodes

MAX_BODY = 1 << 20
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}],
        "stream": False}


@pytest.fixture(scope="module")
def nodes():
    sims, agents = start_nodes(1, MODELS)
    yield [a.address for a in agents]
    for a in agents:
        a.stop(0)
    for s in sims:
        s.stop()


def _proxy(nodes, data, **kw) -> Proxy:
    config = ProxyConfig(listen="127.0.0.1:0", data_dir=data, nodes=nodes,
                         max_body_bytes=MAX_BODY, max_blob_bytes=64 << 20, **kw)
    return Proxy(config).start()


@pytest.fixture(scope="module")
def keyed(nodes, tmp_path_factory):
    proxy = _proxy(nodes, tmp_path_factory.mktemp("keyed"), keys_enabled=True,
                   header_timeout_s=1.0, body_timeout_s=1.0, idle_timeout_s=1.0)
    keys = proxy.context.keys or KeyStore(proxy.db, proxy.clock)
    _, user = keys.create("user")
    _, admin = keys.create("admin", admin=True)
    proxy.user_key, proxy.admin_key = user, admin
    yield proxy
    proxy.stop(grace_s=2)


@pytest.fixture(scope="module")
def open_door(nodes, tmp_path_factory):
    proxy = _proxy(nodes, tmp_path_factory.mktemp("open"))
    yield proxy
    proxy.stop(grace_s=2)


def connect(proxy: Proxy, timeout: float = 10.0) -> socket.socket:
    host, port = proxy.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def head(method: str, path: str, *, length: int | None = None, chunked: bool = False,
         key: str | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: olol", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (status, lower-case headers, body by Content-Length)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += piece
    top, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return int(status_line.split()[1]), headers, rest[:size]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds``."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


# -- item 3: decided on the headers ----------------------------------------------------

@pytest.mark.parametrize("path,openai", [("/api/chat", False), ("/v1/chat/completions", True),
                                         ("/api/blobs/sha256:" + "a" * 64, False)])
def test_no_key_gets_401_before_a_byte_of_body(keyed, path, openai):
    with connect(keyed) as sock:
        sock.sendall(head("POST", path, length=600 << 20))  # announces 600 MB, sends none
        status, headers, body = read_response(sock)
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="olol"'
        error = json.loads(body)["error"]
        message = error["message"] if openai else error
        assert "API key" in message
        assert closed_within(sock, 5)  # and the connection is not kept for the body


def test_bad_key_gets_401_on_headers(keyed):
    with connect(keyed) as sock:
        sock.sendall(head("POST", "/api/chat", length=100, key="olol-not-a-key"))
        assert read_response(sock)[0] == 401


def test_oversized_content_length_gets_413_before_the_body(keyed, open_door):
    for proxy, key in ((keyed, keyed.user_key), (open_door, None)):
        with connect(proxy) as sock:
            sock.sendall(head("POST", "/api/chat", length=MAX_BODY + 1, key=key))
            status, _, body = read_response(sock)
            assert status == 413
            assert json.loads(body) == {
                "error": f"http: request body too large (limit {MAX_BODY} bytes)"}


def test_expect_continue_gets_the_refusal_not_a_continue(open_door):
    with connect(open_door) as sock:
        sock.sendall(head("POST", "/api/generate", length=600 << 20,
                          extra="Expect: 100-continue\r\n"))
        status, _, _ = read_response(sock)
        assert status == 413  # no "100 Continue" first: the client never sends the body


def test_a_chunked_body_is_cut_off_at_the_routes_limit(open_door):
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with connect(open_door) as sock:
        sock.sendall(head("POST", "/api/chat", chunked=True))
        try:
            while sent < 50 * MAX_BODY:
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the proxy read a 50 MB chunked body for a route limited to 1 MB")
    assert sent < 50 * MAX_BODY


def test_a_chunked_body_answers_413_in_the_apis_format(open_door):
    with connect(open_door) as sock:
        sock.sendall(head("POST", "/v1/chat/completions", chunked=True))
        body = b"x" * (MAX_BODY + 10)
        sock.sendall(f"{len(body):x}\r\n".encode() + body[:MAX_BODY // 2])
        try:
            sock.sendall(body[MAX_BODY // 2:])
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, raw = read_response(sock)
    assert status == 413
    assert "too large" in json.loads(raw)["error"]["message"]


def test_only_blob_uploads_take_large_bodies_and_only_with_an_admin_key(keyed):
    blob = "/api/blobs/sha256:" + "b" * 64
    with connect(keyed) as sock:
        sock.sendall(head("POST", blob, length=8 << 20, key=keyed.user_key))
        status, _, body = read_response(sock)
        assert status == 403 and "admin" in json.loads(body)["error"]
    with connect(keyed) as sock:
        sock.sendall(head("POST", "/api/chat", length=8 << 20, key=keyed.admin_key))
        assert read_response(sock)[0] == 413  # an admin key does not lift other routes
    with connect(keyed) as sock:  # the admin upload is read (then refused by digest)
        sock.sendall(head("POST", blob, length=2 << 20, key=keyed.admin_key))
        sock.sendall(b"y" * (2 << 20))
        status, _, body = read_response(sock)
        assert status == 400 and "digest" in json.loads(body)["error"]


def test_a_normal_request_still_works_with_keys(keyed):
    r = requests.post(keyed.url + "/api/chat", json=CHAT, timeout=30,
                      headers={"Authorization": f"Bearer {keyed.user_key}"})
    assert r.status_code == 200 and r.json()["done"] is True


# -- item 4: idle and trickling connections --------------------------------------------

def test_a_thousand_idle_connections_do_not_lock_anyone_out(open_door):
    idle = []
    try:
        for _ in range(1000):
            idle.append(connect(open_door))
        for i, sock in enumerate(idle[:500]):
            if i % 2:
                sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")  # half a request
        t0 = time.monotonic()
        r = requests.post(open_door.url + "/api/chat", json=CHAT, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 200
        assert took < 10, f"a request waited {took:.1f} s behind 1,000 idle connections"
    finally:
        for sock in idle:
            sock.close()


def test_idle_keep_alive_connections_are_dropped(keyed):
    with connect(keyed) as sock:
        sock.sendall(head("GET", "/olol/v1/health"))
        assert read_response(sock)[0] == 200
        assert closed_within(sock, 8)  # idle_timeout_s=1 (checked every second)


def test_a_trickled_header_is_dropped(keyed):
    with connect(keyed) as sock:
        request = head("POST", "/api/chat", length=10, key=keyed.user_key)
        t0 = time.monotonic()
        dropped = False
        for byte in request[:-4]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            if closed_within(sock, 0.2):
                dropped = True
                break
            if time.monotonic() - t0 > 15:
                break
        assert dropped, "a client trickling one header byte every 0.2 s kept its connection"


def test_a_trickled_body_is_dropped(keyed):
    with connect(keyed) as sock:
        sock.sendall(head("POST", "/api/chat", length=1000, key=keyed.user_key))
        t0 = time.monotonic()
        dropped = False
        while time.monotonic() - t0 < 15:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            if closed_within(sock, 0.2):
                dropped = True
                break
        assert dropped, "a client trickling its body kept its connection"


def test_expect_continue_without_a_body_is_answered(open_door):
    with connect(open_door) as sock:
        sock.sendall(head("GET", "/api/version", extra="Expect: 100-continue\r\n"))
        status, _, body = read_response(sock)
    assert status == 200 and "version" in json.loads(body)


def test_a_failing_policy_still_bounds_the_body(open_door, monkeypatch):
    from olol.server import door

    def broken(self, *args):
        raise RuntimeError("policy bug")

    monkeypatch.setattr(door.DoorPolicy, "decide", broken)
    with connect(open_door) as sock:
        sock.sendall(head("POST", "/api/chat", length=600 << 20))
        status, _, _ = read_response(sock)
    assert status == 413  # not read to the end on the largest route's limit
    r = requests.post(open_door.url + "/api/chat", json=CHAT, timeout=30)
    assert r.status_code == 200  # small bodies still served; the app checks them
