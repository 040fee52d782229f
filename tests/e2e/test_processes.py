"""olol up / olol proxy as a user starts them, and their configuration."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import ollama
import pytest
import requests

from olol.cli.proxy import load_config
from olol.proxy import exposure_warning
from tests.bench.procs import free_port
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_olol_up_without_ollama_serves_an_ollama_client_on_simulated_nodes(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "olol", "up", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--ollama-url", "http://127.0.0.1:9"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return requests.get(url + "/api/tags", timeout=0.5).ok
            except requests.RequestException:
                return False

        assert wait_until(up, timeout=30)
        client = ollama.Client(host=url)
        assert "llama3.2:1b" in {m.model for m in client.list().models}
        reply = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
        assert reply.done and reply.message.content
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "NO OLLAMA FOUND" in out and "SIMULATED" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_exposure_warning_only_beyond_loopback_without_keys():
    assert exposure_warning("127.0.0.1", keys_enabled=False) is None
    assert exposure_warning("::1", keys_enabled=False) is None
    assert exposure_warning("0.0.0.0", keys_enabled=True) is None
    warning = exposure_warning("0.0.0.0", keys_enabled=False)
    assert warning and "API keys disabled" in warning


def test_config_file_values_are_type_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('waitress_threads = "x"\nnodes = "host:1"\nkeys_enabled = 1\n')
    with pytest.raises(SystemExit) as err:
        load_config(str(bad), {})
    message = str(err.value)
    assert "waitress_threads must be an integer" in message
    assert "nodes must be a list of strings" in message
    assert "keys_enabled must be true or false" in message
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(SystemExit, match="unknown config keys.*colour"):
        load_config(str(unknown), {})
    good = load_config(str(ROOT / "deploy" / "olol.example.toml"), {"listen": "127.0.0.1:1"})
    assert good.keys_enabled is True and good.listen == "127.0.0.1:1"
    assert good.nodes == ["10.0.0.11:50051", "10.0.0.12:50051"]
