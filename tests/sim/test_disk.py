"""The simulator's declared disk size: pulls that do not fit fail like Ollama's full disk."""

from __future__ import annotations

import argparse

import ollama
import pytest
import requests

from olol.sim.cli import build_config, register


def _pull(sim, model, stream=True):
    r = requests.post(f"{sim.url}/api/pull", json={"model": model, "stream": stream}, timeout=10)
    if not stream:
        return r.status_code, r.json()
    return r.status_code, [requests.models.complexjson.loads(x) for x in r.iter_lines() if x]


def test_pull_that_fits_succeeds_and_uses_disk(make_sim):
    # llama3.2:1b installed (1.3G + small layers); qwen2.5:0.5b (398M) fits in 2G.
    sim = make_sim("llama3.2:1b[size=1.3G]", disk_bytes=2_000_000_000)
    used_before = sim.store.used_bytes()
    status, records = _pull(sim, "qwen2.5:0.5b")
    assert status == 200
    assert records[-1] == {"status": "success"}
    assert sim.store.used_bytes() > used_before + 398_000_000 - 1


def test_pull_that_does_not_fit_streams_disk_full_error(make_sim):
    sim = make_sim("llama3.2:1b[size=1.3G]", disk_bytes=2_000_000_000)
    status, records = _pull(sim, "mistral:latest")  # 4.1G
    assert status == 200
    assert records[0] == {"status": "pulling manifest"}
    assert "no space left on device" in records[-1]["error"]
    names = [m["name"] for m in requests.get(f"{sim.url}/api/tags", timeout=5).json()["models"]]
    assert "mistral:latest" not in names


def test_non_streamed_disk_full_is_500_and_official_client_raises(make_sim):
    sim = make_sim("llama3.2:1b[size=1.3G]", disk_bytes=1_500_000_000)
    status, body = _pull(sim, "llama3.2:3b", stream=False)
    assert status == 500
    assert body["error"].endswith("no space left on device")
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=sim.url).pull("llama3.2:3b")
    assert "no space left on device" in str(info.value)


def test_layers_already_present_do_not_count_twice(make_sim):
    # Re-pulling an installed model needs no new space even on a nearly full disk.
    sim = make_sim("llama3.2:1b[size=1.3G]", disk_bytes=1_301_500_000)
    status, records = _pull(sim, "llama3.2:1b")
    assert records[-1] == {"status": "success"}


def test_unlimited_by_default(make_sim):
    sim = make_sim("llama3.2:1b")
    assert sim.config.disk_bytes is None
    _, records = _pull(sim, "mistral:latest")
    assert records[-1] == {"status": "success"}


def test_cli_flag_parses_suffixes_and_rejects_garbage(capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["sim", "--disk-bytes", "4G"])
    assert build_config(args).disk_bytes == 4_000_000_000
    assert build_config(parser.parse_args(["sim"])).disk_bytes is None
    with pytest.raises(SystemExit):
        parser.parse_args(["sim", "--disk-bytes", "lots"])
    assert "expected a size" in capsys.readouterr().err
