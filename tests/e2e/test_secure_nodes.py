"""The proxy reaching its nodes over mutual TLS with a token, as in production."""

import ollama

from olol.agent.agent import Agent, AgentConfig
from olol.cli import build_parser
from olol.context import ProxyConfig
from olol.proxy import Proxy
from olol.rpc.client import TLSConfig
from olol.sim import SimConfig, Simulator, parse_models_spec
from tests.agent.conftest import make_pki


def test_proxy_to_agent_over_mutual_tls_with_a_token(tmp_path):
    pki = make_pki(tmp_path)
    sim = Simulator(SimConfig(models=parse_models_spec("llama3.2:1b")), host="127.0.0.1", port=0).start()
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=sim.url, token="s3cret",
                              tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                              tls_client_ca=pki["ca"])).start()
    proxy = None
    try:
        tls = TLSConfig(root_cert=pki["ca"], client_cert=pki["client_cert"],
                        client_key=pki["client_key"], server_name="localhost")
        proxy = Proxy(ProxyConfig(listen="127.0.0.1:0", data_dir=None, nodes=[agent.address],
                                  node_token="s3cret", node_tls=tls)).start()
        reply = ollama.Client(host=proxy.url).chat(model="llama3.2:1b", messages=[
            {"role": "user", "content": "hi"}])
        assert reply.done and reply.message.content
    finally:
        if proxy is not None:
            proxy.stop(grace_s=2)
        agent.stop(0)
        sim.stop()


def test_proxy_cli_refuses_a_client_cert_without_its_key(tmp_path, capsys):
    args = build_parser().parse_args([
        "proxy", "--data-dir", str(tmp_path), "--node-ca", "ca.pem", "--node-cert", "c.pem"])
    assert args.func(args) == 2
    assert "--node-cert and --node-key go together" in capsys.readouterr().err
