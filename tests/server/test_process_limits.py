"""Process-wide limits the proxy sets at start-up: open files and malloc arenas."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from olol.proxy import limit_malloc_arenas, raise_fd_limit


def test_the_open_file_limit_is_raised_to_fit_the_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        want = 3000
        if hard != resource.RLIM_INFINITY and hard < want + 512:
            pytest.skip(f"hard open-file limit {hard} is below the test's need")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert raise_fd_limit(want) == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want + 512
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_fewer_connections_fit_under_a_low_hard_limit():
    code = (
        "import resource; from olol.proxy import raise_fd_limit;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600));"
        "print(raise_fd_limit(4096))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) == 600 - 512


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_are_capped_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert limit_malloc_arenas(2) is True


def test_a_clean_stop_logs_no_waitress_warning(caplog):
    import logging

    import requests

    from olol.context import ProxyConfig
    from olol.proxy import Proxy

    with caplog.at_level(logging.WARNING):
        proxy = Proxy(ProxyConfig(listen="127.0.0.1:0")).start()
        requests.get(proxy.url + "/api/version", timeout=10)
        proxy.stop(grace_s=1)
    assert not [r for r in caplog.records if "unhandled" in r.getMessage()]


def test_log_level_must_be_a_level(capsys):
    from olol.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-level", "LOUD", "proxy"])
    assert "invalid choice" in capsys.readouterr().err
    assert build_parser().parse_args(["--log-level", "debug", "proxy"]).log_level == "DEBUG"


def test_a_bad_or_busy_listen_address_is_named():
    import socket

    from olol.context import ProxyConfig
    from olol.proxy import Proxy

    with pytest.raises(ValueError, match="port must be 0-65535"):
        Proxy(ProxyConfig(listen="127.0.0.1:999999")).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot listen on {address}"):
            Proxy(ProxyConfig(listen=address)).start()


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    from olol.store import DatabaseManager

    with DatabaseManager(tmp_path / "d") as db:
        for i in range(3000):
            db.insert("config", {"key": f"k{i}", "value": "x" * 100})
    proc = subprocess.Popen([sys.executable, "-m", "olol", "db", "dump", "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_no_proxy_is_said_in_plain_words(capsys):
    from olol.cli import main

    assert main(["nodes", "ls", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "connection refused: is the proxy running?" in err
    assert "HTTPConnectionPool" not in err and "NewConnectionError" not in err


def test_sim_pull_speed_takes_a_size_suffix():
    from olol.cli import build_parser

    args = build_parser().parse_args(["sim", "--pull-speed", "200M"])
    assert args.pull_speed == 200 * 1024**2 or args.pull_speed == 200_000_000
    assert build_parser().parse_args(["sim", "--pull-speed", "1.5e3"]).pull_speed == 1500.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sim", "--pull-speed", "fast"])
