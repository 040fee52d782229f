"""One address parser for the CLI, the config, the proxy and the agent."""

from __future__ import annotations

import pytest

from olol.address import connect_host, format_address, is_loopback, parse_address
from olol.agent.agent import AgentConfigError, split_host_port
from olol.cli.clientconf import url_from_listen
from olol.cluster import normalize_address
from olol.proxy import split_hostport


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:11435", ("127.0.0.1", 11435)),
    ("gpu1.lan:50051", ("gpu1.lan", 50051)),
    ("[::1]:50051", ("::1", 50051)),
    (" host:1 ", ("host", 1)),
])
def test_good_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text, reason", [
    ("host", "no port"),
    (":50051", "no host"),
    ("host:99999", "1-65535"),
    ("host:0", "1-65535"),
    ("host:http", "must be a number"),
    ("::1:50051", "in brackets"),
    ("[::1", "unclosed"),
    ("[nothost]:1", "not an IPv6 address"),
    ("http://host:1", "without a scheme"),
    ("a b:1", "not a host name"),
    ("999999", "not a bare number .ports are 0-65535"),
    ("8080", "a port alone is written :8080"),
    ("", "HOST:PORT"),
    (None, "HOST:PORT"),
])
def test_bad_addresses_say_why(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_address(text, what="node address")


def test_listen_addresses_allow_port_0_and_defaults():
    assert parse_address("127.0.0.1:0", listen=True) == ("127.0.0.1", 0)
    assert parse_address("localhost", default_port=11435) == ("localhost", 11435)
    assert parse_address(":8080", default_host="0.0.0.0") == ("0.0.0.0", 8080)


def test_every_user_applies_the_same_rules():
    for text in ("host:99999", "::1:5", "host:x"):
        with pytest.raises(ValueError):
            split_hostport(text, 11435)
        with pytest.raises(AgentConfigError):
            split_host_port(text)
        with pytest.raises(ValueError):
            normalize_address(text)
        with pytest.raises(ValueError):
            url_from_listen(text)
    assert split_hostport("[::1]:8080", 11435) == split_host_port("[::1]:8080") == ("::1", 8080)


def test_loopback_and_formatting():
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "127.example.com", "::"))
    assert format_address("::1", 5) == "[::1]:5" and format_address("h", 5) == "h:5"
    assert connect_host("0.0.0.0") == "127.0.0.1" and connect_host("::") == "::1"
    assert url_from_listen("0.0.0.0:11435") == "http://127.0.0.1:11435"
    assert url_from_listen("[::]:9") == "http://[::1]:9"
