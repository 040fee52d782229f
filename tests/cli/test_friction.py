"""The friction points of issue 13, each through a real ``olol`` process: the exit status,
one line on stderr that says what is wrong, and never a traceback."""

from __future__ import annotations

import re
import signal
import socket

import pytest

from olol.agent.agent import Agent, AgentConfig
from olol.store import DatabaseManager
from tests.cli.conftest import fails_in_one_line, message_lines, usage_error
from tests.support import wait_until


def test_a_bare_number_as_listen_address_is_refused_before_anything_starts(olol, tmp_path):
    data = tmp_path / "proxy-data"
    result = olol("proxy", "--listen", "999999", "--data-dir", str(data))
    line = fails_in_one_line(result, 2, "999999", "HOST:PORT")
    assert "Errno" not in line
    assert not data.exists()  # refused before the store was opened
    fails_in_one_line(olol("up", "--listen", "999999", "--data-dir", str(data)), 2,
                      "999999", "HOST:PORT")
    fails_in_one_line(olol("proxy", "--listen", "127.0.0.1:70000", "--data-dir", str(data)),
                      2, "127.0.0.1:70000", "0-65535")


def test_a_taken_port_is_named_with_its_address(olol, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = olol("proxy", "--listen", f"localhost:{port}", "--data-dir",
                      str(tmp_path / "d"))
    line = fails_in_one_line(result, 1, f"localhost:{port}", "already in use")
    assert line.startswith("olol proxy: cannot listen on ") and "Errno" not in line


def test_an_unknown_log_level_is_refused(olol):
    usage_error(olol("--log-level", "LOUD", "nodes", "ls"), "--log-level", "'LOUD'", "DEBUG")
    assert olol("--log-level", "debug", "--version").returncode == 0  # any case


def test_no_proxy_running_is_one_clear_line(olol):
    result = olol("nodes", "ls", "--url", "http://127.0.0.1:9", "--timeout", "2")
    line = fails_in_one_line(result, 1, "cannot reach the olol proxy at http://127.0.0.1:9",
                             "is the proxy running?")
    assert "urllib3" not in line and "HTTPConnectionPool" not in line
    # without --url: the default address, the same sentence
    result = olol("models", "ls", OLOL_URL="http://127.0.0.1:9")
    fails_in_one_line(result, 1, "cannot reach the olol proxy")


def test_a_closed_pipe_ends_db_dump_quietly(olol, tmp_path):
    data = tmp_path / "data"
    with DatabaseManager(data) as db:
        for i in range(2000):  # far more than a pipe holds
            db.insert("servers", {"address": f"10.0.{i // 250}.{i % 250}:50051",
                                  "healthy": False, "last_error": "x" * 80})
    proc = olol.popen("db", "dump", "servers", "--data-dir", str(data))
    assert proc.stdout.readline().strip() == "{"
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and not err.strip(), err


def test_sim_pull_speed_takes_a_size_like_the_other_options(olol):
    proc = olol.popen("sim", "--listen", "127.0.0.1:0", "--pull-speed", "200M",
                      "--disk-bytes", "10G")
    try:
        line = proc.stdout.readline()
        assert line.startswith("olol sim listening on http://127.0.0.1:"), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    usage_error(olol("sim", "--pull-speed", "fast"), "--pull-speed", "200M")


def test_node_status_exits_1_when_the_nodes_ollama_is_down(olol):
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    agent = Agent(AgentConfig(listen="127.0.0.1:0", ollama_url=dead, status_timeout=1.0))
    agent.start()
    try:
        result = olol("node", "status", agent.address, "--timeout", "10")
        fails_in_one_line(result, 1, agent.address, "Ollama is not reachable")
        assert "ollama DOWN" in result.stdout  # the status itself is still shown
    finally:
        agent.stop(0)
    result = olol("node", "status", agent.address, "--timeout", "2")  # nobody there now
    fails_in_one_line(result, 1, agent.address)


def test_duplicate_key_names_are_refused(olol, tmp_path):
    data = str(tmp_path / "keys")
    made = olol("keys", "create", "ci-bot", "--data-dir", data)
    assert made.returncode == 0 and "key: olol-" in made.stdout
    again = olol("keys", "create", "ci-bot", "--data-dir", data)
    fails_in_one_line(again, 2, "already named 'ci-bot'")
    listed = olol("keys", "ls", "--data-dir", data)
    assert listed.returncode == 0
    assert sum(line.endswith(" ci-bot") for line in listed.stdout.splitlines()) == 1


def test_up_help_has_a_description_and_its_defaults(olol):
    result = olol("up", "--help")
    assert result.returncode == 0 and not result.stderr
    text = re.sub(r"\s+", " ", result.stdout)
    assert "Start a proxy and one node agent per local Ollama" in text
    assert "(default 127.0.0.1:11435)" in text
    assert "(default http://127.0.0.1:11434)" in text
    assert "$OLOL_DATA_DIR" in text


@pytest.mark.parametrize("argv", [["models", "pull", "--help"], ["jobs", "wait", "--help"],
                                  ["worker", "--help"], ["node", "status", "--help"],
                                  ["db", "dump", "--help"]])
def test_every_help_opens_with_what_the_command_does(olol, argv):
    result = olol(*argv)
    assert result.returncode == 0
    paragraphs = result.stdout.split("\n\n")
    assert paragraphs[0].startswith("usage: olol ")
    assert paragraphs[1].strip() and not paragraphs[1].startswith(("positional", "options"))


def test_usage_mistakes_and_no_command(olol):
    result = olol()
    assert result.returncode == 2 and "usage: olol" in result.stdout
    usage_error(olol("models", "pull"), "name")
    usage_error(olol("nodes", "frobnicate"), "frobnicate")
    assert olol("--version").stdout.startswith("olol ")


def test_a_bad_address_for_nodes_add_is_one_line(olol, tmp_path):
    result = olol("nodes", "add", "gpu1:99999", "--data-dir", str(tmp_path / "d"))
    fails_in_one_line(result, 2, "gpu1:99999")
    assert message_lines(result.stderr)[0].startswith("olol nodes: ")


def test_a_bad_proxy_setting_in_the_environment_is_one_line(olol, tmp_path):
    result = olol("proxy", "--data-dir", str(tmp_path / "d"), OLOL_WAITRESS_THREADS="many")
    fails_in_one_line(result, 1, "OLOL_WAITRESS_THREADS")


def test_the_proxy_stops_on_sigterm_without_noise(olol, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = olol.popen("proxy", "--listen", f"127.0.0.1:{port}", "--data-dir",
                      str(tmp_path / "d"))
    try:
        line = proc.stdout.readline()
        assert "olol proxy serving the Ollama API on http://127.0.0.1:" in line, line
        assert wait_until(lambda: _answers(port), timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "Traceback" not in err and "unhandled close event" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
