"""deploy/nginx/olol.conf, run for real in front of a live proxy (skipped where nginx
is not installed: ``apt-get install nginx-light``).

The example is used as shipped, with only its addresses and certificate paths
replaced, in front of a proxy with keys on (a public deployment): TLS, streaming
through it with the official client, the dashboard's cookie marked Secure, and the
per-address limits that olol leaves to a fronting proxy.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import ollama
import pytest
import requests

from tests.e2e.conftest import MODELS, start_nodes
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    from olol.context import ProxyConfig
    from olol.keys import KeyStore
    from olol.proxy import Proxy

    tmp = tmp_path_factory.mktemp("nginx")
    sims, agents = start_nodes(1, MODELS)
    proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=tmp / "data", keys_enabled=True,
                              nodes=[a.address for a in agents])).start()
    keys = proxy.context.keys or KeyStore(proxy.db, proxy.clock)
    _, admin = keys.create("admin", admin=True)
    cert, key = self_signed(tmp)
    port = free_port()
    site = (ROOT / "deploy" / "nginx" / "olol.conf").read_text()
    replaced = {"127.0.0.1:11435": proxy.address, "listen 443 ": f"listen 127.0.0.1:{port} ",
                "/etc/ssl/olol/cert.pem": str(cert), "/etc/ssl/olol/key.pem": str(key)}
    for old, new in replaced.items():
        assert old in site, f"deploy/nginx/olol.conf no longer has {old!r}"
        site = site.replace(old, new)
    (tmp / "olol.conf").write_text(site)
    (tmp / "logs").mkdir()
    (tmp / "nginx.conf").write_text(f"""
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {tmp}/olol.conf;
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"https://localhost:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            requests.get(url + "/olol/v1/health", verify=str(cert), timeout=1)
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read().decode(errors="replace")
                pytest.fail(f"nginx did not start with the example config: {out}")
            time.sleep(0.1)
    yield url, str(cert), admin
    proc.terminate()
    proc.wait(timeout=10)
    proxy.stop(grace_s=2)
    for a in agents:
        a.stop(0)
    for s in sims:
        s.stop()


def test_the_official_client_chats_and_streams_through_tls(front):
    url, ca, key = front
    client = ollama.Client(host=url, verify=ssl.create_default_context(cafile=ca),
                           headers={"Authorization": f"Bearer {key}"})
    answer = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
    assert answer.done and answer.message.content
    parts = list(client.chat(model="llama3.2:1b", stream=True,
                             messages=[{"role": "user", "content": "hello there"}]))
    assert len(parts) > 2 and parts[-1].done  # streamed record by record, not buffered


def test_the_dashboard_cookie_is_marked_secure(front):
    url, ca, key = front
    r = requests.post(url + "/olol/ui/login", data={"key": key}, verify=ca, timeout=10,
                      allow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("olol_ui=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite"} <= flags
    page = requests.get(url + "/olol/ui/nodes", verify=ca, timeout=10,
                        cookies={"olol_ui": r.cookies["olol_ui"]}, allow_redirects=False)
    assert page.status_code == 200  # the session works through the front


def test_a_body_over_the_limit_is_refused_by_nginx(front):
    url, ca, key = front
    r = requests.post(url + "/api/chat", data=b"x" * (33 << 20), verify=ca, timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_one_address_cannot_hold_more_than_its_share_of_connections(front):
    url, ca, key = front
    auth = f"Authorization: Bearer {key}\r\n".encode()
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=ca)
    held = []
    try:
        for _ in range(64):  # the example's limit_conn (held requests, not sockets)
            raw = socket.create_connection((host, int(port)), timeout=10)
            sock = ctx.wrap_socket(raw, server_hostname=host)
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n" + auth
                         + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            held.append(sock)
        # nginx counts a connection once it has read its request's headers
        assert wait_until(lambda: requests.get(url + "/olol/v1/health", verify=ca,
                                               timeout=10).status_code == 429, step=0.1)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while requests.get(url + "/olol/v1/health", verify=ca, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the limit did not lift when the connections closed"
        time.sleep(0.2)
