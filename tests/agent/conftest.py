"""Fixtures: a real simulator and a real agent on loopback ports, plus TLS material."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.rpc.client import NodeClient
from olol.sim import Simulator
from tests import support
from tests.support import wait_until  # noqa: F401

MODELS = "llama3.2:1b,nomic-embed-text[embed]"


def make_sim(**overrides) -> Simulator:
    return support.make_sim(**{"models": MODELS, **overrides})


@pytest.fixture(scope="module")
def sim():
    s = make_sim()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_sim():
    """Paced tokens: a long generation is still running when the test cancels it."""
    s = make_sim(tokens_per_second=50.0)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request):
    yield
    for name in ("sim", "slow_sim"):
        if name in request.fixturenames:
            request.getfixturevalue(name).faults.clear()


@pytest.fixture(scope="module")
def agent(sim):
    a = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url)).start()
    yield a
    a.stop(0)


@pytest.fixture(scope="module", params=[True, False], ids=["mux", "plain"])
def client(agent, request):
    """Generate and Chat on the multiplexed call, and as plain calls: the same answers."""
    c = NodeClient(agent.address, timeout=10.0, mux=request.param, mux_lone=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def slow_agent(slow_sim):
    a = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=slow_sim.url)).start()
    yield a
    a.stop(0)


@pytest.fixture(scope="module", params=[True, False], ids=["mux", "plain"])
def slow_client(slow_agent, request):
    c = NodeClient(slow_agent.address, timeout=10.0, mux=request.param, mux_lone=True)
    yield c
    c.close()


# -- TLS material ---------------------------------------------------------------


def _write_pem(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_pki(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def key_pem(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("olol test CA")).issuer_name(name("olol test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage, san: list | None):
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, builder.sign(ca_key, hashes.SHA256())

    srv_key, srv = leaf(
        "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    cli_key, cli = leaf("olol coordinator", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = serialization.Encoding.PEM
    return {
        "ca": _write_pem(folder / "ca.pem", ca.public_bytes(pem)),
        "server_cert": _write_pem(folder / "server.pem", srv.public_bytes(pem)),
        "server_key": _write_pem(folder / "server.key", key_pem(srv_key)),
        "client_cert": _write_pem(folder / "client.pem", cli.public_bytes(pem)),
        "client_key": _write_pem(folder / "client.key", key_pem(cli_key)),
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))
