"""``olol sim`` in a real subprocess, and the argparse wiring."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from olol.sim import cli

_RUN = "import sys; from olol import cli; sys.exit(cli.main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_register_parses_all_flags():
    args = _parser().parse_args([
        "sim", "--listen", "127.0.0.1:0", "--models", "a[tps=5]", "--ttft", "0.1",
        "--tokens-per-second", "30", "--load-time", "1", "--parallel", "2",
        "--max-loaded", "1", "--max-queue", "7"])
    config = cli.build_config(args)
    assert args.listen == ("127.0.0.1", 0) and args.func is cli.run
    assert (config.ttft, config.tokens_per_second, config.load_time) == (0.1, 30.0, 1.0)
    assert (config.parallel, config.max_loaded, config.max_queue) == (2, 1, 7)
    assert config.models[0].tokens_per_second == 5.0


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        _parser().parse_args(["sim", "--listen", "nope"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["sim", "--ttft", "-1"])
    args = _parser().parse_args(["sim", "--models", "x[bogus=1]", "--listen", "127.0.0.1:0"])
    assert cli.run(args) == cli.RET_BAD_CONFIG


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_serves_and_stops_cleanly(sig):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, "sim", "--listen", f"127.0.0.1:{port}",
         "--models", "tiny:1b"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/tags", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.05)
        assert r.status_code == 200, r.text
        assert [m["name"] for m in r.json()["models"]] == ["tiny:1b"]
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
