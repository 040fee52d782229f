"""`olol worker` / `olol node status` wiring, SIGTERM grace, and codegen staleness."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from olol.agent import cli
from olol.rpc import codegen
from olol.rpc.client import NodeClient

REPO = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olol")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_node_status_human_and_json(agent, capsys):
    args = _parser().parse_args(["node", "status", agent.address])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "ollama" in text and "llama3.2:1b" in text and "gpu" in text
    args = _parser().parse_args(["node", "status", agent.address, "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["agent"]["parallel"] == 4


def test_node_status_unreachable_exits_1(capsys):
    args = _parser().parse_args(["node", "status", "127.0.0.1:1", "--timeout", "1"])
    assert args.func(args) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_node_status_exits_1_when_the_agents_ollama_is_down(capsys):
    import socket

    from olol.agent.agent import Agent, AgentConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=dead)).start()
    try:
        args = _parser().parse_args(["node", "status", agent.address, "--timeout", "10"])
        assert args.func(args) == 1
        assert "Ollama is not reachable" in capsys.readouterr().err
    finally:
        agent.stop(0)


def test_worker_refuses_public_bind_without_tls(capsys):
    args = _parser().parse_args(["worker", "--listen", "0.0.0.0:0"])
    assert args.func(args) == 2
    assert "without TLS" in capsys.readouterr().err


def test_sigterm_lets_a_running_stream_finish_then_exits_0(slow_sim):
    code = "import sys; from olol.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "worker", "--listen", "127.0.0.1:0",
         "--ollama-url", slow_sim.url, "--grace", "10"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()
        address = re.search(r"listening on (\S+)", line).group(1)
        with NodeClient(address, timeout=10) as client:
            # Tokens paced at 50/s: still running when SIGTERM arrives.
            stream = client.generate({"model": "llama3.2:1b", "prompt": "x",
                                      "options": {"num_predict": 40}})
            assert next(stream)["done"] is False
            proc.send_signal(signal.SIGTERM)
            rest = list(stream)
        assert rest[-1]["done"] is True and rest[-1]["done_reason"] in ("stop", "length")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def test_codegen_check_passes_and_detects_stale(tmp_path):
    assert codegen.check() == []
    for name in codegen.GENERATED:
        shutil.copy(codegen.PACKAGE_DIR / name, tmp_path / name)
    with open(tmp_path / "node_pb2_grpc.py", "a") as fh:
        fh.write("# hand edit\n")
    assert codegen.check(tmp_path) == ["node_pb2_grpc.py"]
