"""``olol certs init|issue`` and the proxy's node TLS settings from its config file: a
proxy and two workers over mutual TLS with a token read from a file (issue 12 items 4
and 5)."""

from __future__ import annotations

import os
import stat

import ollama
import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.cli import main as olol_main
from olol.cli.proxy import load_config
from olol.proxy import Proxy
from olol.rpc.client import NodeClient, NodeError, TLSConfig
from olol.sim import SimConfig, Simulator, parse_models_spec


def test_init_and_issue_write_a_ca_and_certificates(tmp_path, capsys):
    d = str(tmp_path / "pki")
    assert olol_main(["certs", "init", "--dir", d]) == 0
    assert olol_main(["certs", "issue", "worker1", "--host", "localhost", "--host", "127.0.0.1",
                      "--dir", d]) == 0
    assert olol_main(["certs", "issue", "proxy", "--dir", d]) == 0
    names = sorted(os.listdir(d))
    assert names == ["ca-key.pem", "ca.pem", "proxy-key.pem", "proxy.pem", "worker1-key.pem",
                     "worker1.pem"]
    for key in ("ca-key.pem", "proxy-key.pem", "worker1-key.pem"):
        assert stat.S_IMODE(os.stat(os.path.join(d, key)).st_mode) == 0o600
    capsys.readouterr()
    # never overwritten, and clear errors
    assert olol_main(["certs", "init", "--dir", d]) == 1
    assert "already has a CA" in capsys.readouterr().err
    assert olol_main(["certs", "issue", "worker1", "--host", "x", "--dir", d]) == 1
    assert "exists" in capsys.readouterr().err
    assert olol_main(["certs", "issue", "w2", "--host", "bad host", "--dir", d]) == 1
    assert "bad --host" in capsys.readouterr().err
    assert olol_main(["certs", "issue", "w3", "--dir", str(tmp_path / "none")]) == 1
    assert "olol certs init" in capsys.readouterr().err


def test_two_workers_over_mutual_tls_from_the_config_file(tmp_path):
    d = tmp_path / "pki"
    assert olol_main(["certs", "init", "--dir", str(d)]) == 0
    for name in ("worker1", "worker2"):
        assert olol_main(["certs", "issue", name, "--host", "localhost", "--dir", str(d)]) == 0
    assert olol_main(["certs", "issue", "proxy", "--dir", str(d)]) == 0
    (tmp_path / "token").write_text("s3cret\n")
    os.chmod(tmp_path / "token", 0o600)
    sims, agents = [], []
    try:
        for name in ("worker1", "worker2"):
            sim = Simulator(SimConfig(models=parse_models_spec("llama3.2:1b")),
                            host="127.0.0.1", port=0).start()
            sims.append(sim)
            agents.append(Agent(AgentConfig(
                listen="127.0.0.1:0", ollama_url=sim.url, token="s3cret",
                tls_cert=str(d / f"{name}.pem"), tls_key=str(d / f"{name}-key.pem"),
                tls_client_ca=str(d / "ca.pem"))).start())
        conf = tmp_path / "olol.toml"
        conf.write_text(
            'listen = "127.0.0.1:0"\n'
            f'data_dir = "{tmp_path / "data"}"\n'
            f'nodes = ["{agents[0].address}", "{agents[1].address}"]\n'
            f'node_token_file = "{tmp_path / "token"}"\n'
            f'node_ca = "{d / "ca.pem"}"\n'
            f'node_cert = "{d / "proxy.pem"}"\n'
            f'node_key = "{d / "proxy-key.pem"}"\n'
            'node_server_name = "localhost"\n')
        config = load_config(str(conf), {})
        with Proxy(config) as proxy:
            assert all(n.healthy for n in proxy.cluster.list_nodes())
            client = ollama.Client(host=proxy.url)
            for _ in range(4):
                reply = client.chat(model="llama3.2:1b",
                                    messages=[{"role": "user", "content": "hi"}])
                assert reply.done and reply.message.content
        # a client without a certificate from this CA is refused by the worker
        stranger = NodeClient(agents[0].address, token="s3cret", tls=TLSConfig(
            root_cert=d / "ca.pem", server_name="localhost"))
        with pytest.raises(NodeError):
            stranger.version(timeout=5)
        stranger.close()
    finally:
        for a in agents:
            a.stop(0)
        for s in sims:
            s.stop()


def test_bad_tls_settings_are_refused_with_the_keys_name(tmp_path):
    conf = tmp_path / "olol.toml"
    conf.write_text('node_tls = "ca.pem"\n')
    with pytest.raises(SystemExit, match="node_ca, node_cert and node_key"):
        load_config(str(conf), {})
    conf.write_text(f'node_ca = "{tmp_path / "missing.pem"}"\n')
    with pytest.raises(ValueError, match="node_ca: no such file"):
        Proxy(load_config(str(conf), {}))
    (tmp_path / "empty").write_text("")
    conf.write_text(f'node_token_file = "{tmp_path / "empty"}"\n')
    with pytest.raises(ValueError, match="is empty"):
        Proxy(load_config(str(conf), {}))
