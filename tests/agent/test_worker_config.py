"""The worker's settings: one schema for its file, OLOL_WORKER_* variables and flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from olol.agent.cli import register, worker_config
from olol.agent.config import ENV_PREFIX, WorkerConfig, convert
from olol.cli.proxy import read_settings

REPO = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


def test_defaults_file_environment_then_flags(tmp_path):
    conf = tmp_path / "worker.toml"
    conf.write_text('listen = "127.0.0.1:6000"\nparallel = 8\ngrace = 5.0\n'
                    'disk_budget = "200G"\nollama_url = "http://127.0.0.1:9"\n')
    env = {"OLOL_WORKER_PARALLEL": "12", "OLOL_WORKER_MEMORY_BUDGET": "8G",
           "OLOL_PARALLEL": "99"}  # the proxy's prefix is not the worker's
    cfg = worker_config(_args("--config", str(conf), "--grace", "7"), env=env)
    assert cfg.listen == "127.0.0.1:6000"        # file
    assert cfg.ollama_url == "http://127.0.0.1:9"
    assert cfg.parallel == 12                     # environment over file
    assert cfg.grace == 7.0                       # flag over file
    assert cfg.disk_budget == "200G" and cfg.memory_budget == "8G"
    assert cfg.insecure_bind_any is False and cfg.token_file is None  # defaults
    plain = worker_config(_args(), env={})
    assert plain == WorkerConfig()


def test_the_file_may_give_a_size_as_bytes(tmp_path):
    conf = tmp_path / "worker.toml"
    conf.write_text("disk_budget = 1000000\n")
    assert worker_config(_args("--config", str(conf)), env={}).disk_budget == "1000000"


@pytest.mark.parametrize("text, needle", [
    ("paralel = 4\n", "unknown config keys in"),
    ('parallel = "four"\n', "parallel must be an integer"),
    ("insecure_bind_any = 1\n", "insecure_bind_any must be true or false"),
    ('disk_budget = "lots"\n', "disk_budget: bad size"),
    ("node_token = 'x'\n", "unknown config keys"),
])
def test_a_bad_file_names_the_key(tmp_path, text, needle):
    conf = tmp_path / "worker.toml"
    conf.write_text(text)
    with pytest.raises(SystemExit) as err:
        worker_config(_args("--config", str(conf)), env={})
    assert needle in str(err.value)


def test_a_bad_environment_variable_names_it():
    with pytest.raises(SystemExit) as err:
        worker_config(_args(), env={"OLOL_WORKER_GRACE": "soon"})
    assert "OLOL_WORKER_GRACE" in str(err.value) and "grace must be a number" in str(err.value)


def test_every_setting_has_a_flag_and_a_variable():
    args = _args()
    for name in WorkerConfig.__dataclass_fields__:
        assert hasattr(args, name), name
        value = "1" if name != "insecure_bind_any" else "true"
        got = read_settings(None, {}, WorkerConfig, {ENV_PREFIX + name.upper(): value},
                            prefix=ENV_PREFIX, convert=convert)
        assert name in got, name


def test_the_worker_starts_from_its_file_and_refuses_a_bad_one(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('listen = "127.0.0.1:0"\nollama_url = "http://127.0.0.1:9"\ngrace = 0.5\n')
    code = ("import sys, threading; from olol.cli import main; "
            "threading.Timer(1.5, lambda: __import__('os').kill(__import__('os').getpid(), 15)).start(); "
            "sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "worker", "--config", str(good)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "olol worker listening on 127.0.0.1:" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("parallel = -x\n")
    out = subprocess.run([sys.executable, "-m", "olol", "worker", "--config", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot read config" in out.stderr and "Traceback" not in out.stderr


def test_the_shipped_example_is_valid():
    cfg = worker_config(_args("--config", str(REPO / "deploy" / "olol-worker.example.toml")),
                        env={})
    assert cfg.listen == "0.0.0.0:50051" and cfg.tls_client_ca.endswith("/ca.pem")
