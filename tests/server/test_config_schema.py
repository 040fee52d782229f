"""ProxyConfig is the one source of the proxy's settings: file, environment, flags and
docs/config.md agree (issue 12 item 4)."""

from __future__ import annotations

import pytest

from olol.cli import build_parser
from olol.cli.proxy import config_fields, env_name, flag_overrides, load_config
from olol.config_doc import DOC, render


def test_docs_config_md_is_generated_from_the_schema():
    assert DOC.read_text() == render(), "run: python -m olol.config_doc"


def test_every_setting_is_documented_and_has_a_flag():
    parser = build_parser()
    proxy = parser._subparsers._group_actions[0].choices["proxy"]
    dests = {a.dest for a in proxy._actions}
    for f in config_fields():
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert f.name in dests, f"{f.name} has no flag"
        assert f"`{f.name}`" in DOC.read_text()


def parse(*argv: str):
    return build_parser().parse_args(["proxy", *argv])


def test_precedence_default_file_environment_flag(tmp_path):
    conf = tmp_path / "olol.toml"
    conf.write_text('dispatcher_threads = 5\nmax_attempts = 4\nnode_progress = false\n'
                    'nodes = ["a:1"]\n')
    env = {env_name("max_attempts"): "6", env_name("retry_backoff_s"): "0.5",
           env_name("nodes"): "b:2, c:3", env_name("keys_enabled"): "yes",
           env_name("job_intervals"): '{"olol-health": 9}'}
    args = parse("--max-attempts", "7", "--no-node-progress", "--threads", "3")
    config = load_config(str(conf), flag_overrides(args), env=env)
    assert config.dispatcher_threads == 5  # file
    assert config.max_attempts == 7  # flag over environment over file
    assert config.retry_backoff_s == 0.5  # environment
    assert config.nodes == ["b:2", "c:3"]
    assert config.keys_enabled is True
    assert config.job_intervals == {"olol-health": 9}
    assert config.node_progress is False
    assert config.waitress_threads == 3  # an alias flag
    assert config.stall_timeout_s == 60.0  # default


def test_the_short_flags_still_work():
    config = load_config(None, flag_overrides(parse("--node", "x:1", "--node", "y:2",
                                                    "--keys", "--strategy", "least-busy")),
                         env={})
    assert config.nodes == ["x:1", "y:2"] and config.keys_enabled
    assert config.strategy == "least-busy"


@pytest.mark.parametrize("key,raw", [("max_attempts", "three"), ("keys_enabled", "maybe"),
                                     ("retry_backoff_s", "fast"), ("job_intervals", "{x")])
def test_a_bad_environment_value_names_its_variable(key, raw):
    with pytest.raises(SystemExit, match=env_name(key)):
        load_config(None, {}, env={env_name(key): raw})


def test_a_bad_file_value_names_its_key(tmp_path):
    conf = tmp_path / "olol.toml"
    conf.write_text('lease_s = "long"\n')
    with pytest.raises(SystemExit, match="lease_s must be a number"):
        load_config(str(conf), {}, env={})
    conf.write_text('lease = 5\n')
    with pytest.raises(SystemExit, match="unknown config keys.*lease"):
        load_config(str(conf), {}, env={})
