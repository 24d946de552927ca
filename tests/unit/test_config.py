"""Config: head addresses and the port of each socket role."""

from __future__ import annotations

import dataclasses

import pytest

from common.config import (
    DEFAULT_PORT_BASE, ENV_PREFIX, SOCKET_ROLES, HeadAddress, HeadConfig, ProviderConfig, Timing, env_default,
)
from common.errors import ConfigError


@pytest.mark.parametrize(("text", "host", "base"), [
    ("tcp://head.example.com:6000", "head.example.com", 6000),
    ("tcp://10.0.0.5", "10.0.0.5", DEFAULT_PORT_BASE),
    ("tcp://127.0.0.1:5555/", "127.0.0.1", 5555),
    ("localhost", "localhost", 5555),
    ("my_host-1:7000", "my_host-1", 7000),
    ("tcp://[::1]:5555", "[::1]", 5555),
    ("tcp://[fe80::1]", "[fe80::1]", 5555),
    ("tcp://h:1", "h", 1),
    ("tcp://h:65530", "h", 65530),
    ("tcp://h:6000  ", "h", 6000),
])
def test_parse_good_addresses(text, host, base):
    assert HeadAddress.parse(text) == HeadAddress(host, base)


@pytest.mark.parametrize(("text", "match"), [
    ("udp://head:5555", "is not of the form tcp://HOST"),
    ("http://head", "is not of the form tcp://HOST"),
    ("tcp://", "is not of the form tcp://HOST"),
    ("", "is not of the form tcp://HOST"),
    ("tcp://head:port", "is not of the form tcp://HOST"),
    ("tcp://head:555555", "is not of the form tcp://HOST"),
    ("tcp://he ad:5555", "is not of the form tcp://HOST"),
    ("tcp://head:5555/path", "is not of the form tcp://HOST"),
    ("tcp://user@head:5555", "is not of the form tcp://HOST"),
    ("tcp://*:5555", "is not of the form tcp://HOST"),
    ("tcp://head:-1", "is not of the form tcp://HOST"),
    ("tcp://head:0", "port base 0 leaves no room"),
    ("tcp://head:65531", "port base 65531 leaves no room for the head's 5 ports"),
    ("tcp://head:99999", "port base 99999 leaves no room"),
])
def test_parse_bad_addresses(text, match):
    with pytest.raises(ConfigError, match=match):
        HeadAddress.parse(text)


def test_ports_and_urls_per_role():
    addr = HeadAddress.parse("tcp://head:6000")
    assert SOCKET_ROLES == ("registration", "heartbeat", "tasks", "results", "api")
    assert {role: addr.port(role) for role in SOCKET_ROLES} == {
        "registration": 6000, "heartbeat": 6001, "tasks": 6002, "results": 6003, "api": 6004}
    assert addr.url("registration") == "tcp://head:6000"
    assert addr.url("api") == "tcp://head:6004"
    assert str(addr) == "tcp://head:6000"
    assert HeadAddress.parse(str(addr)) == addr


def test_default_ports_match_the_design():
    addr = HeadAddress("localhost")
    assert [addr.port(r) for r in SOCKET_ROLES] == [5555, 5556, 5557, 5558, 5559]


def test_ipv6_urls_keep_their_brackets():
    assert HeadAddress.parse("tcp://[::1]:7000").url("results") == "tcp://[::1]:7003"


def test_unknown_role_is_refused():
    with pytest.raises(ValueError):
        HeadAddress("h").port("dashboard")


def test_head_bind_urls():
    cfg = HeadConfig(bind_host="127.0.0.1", port_base=7000)
    assert [cfg.bind_url(r) for r in SOCKET_ROLES] == [f"tcp://127.0.0.1:{7000 + i}" for i in range(5)]
    assert HeadConfig().bind_url("api") == "tcp://0.0.0.0:5559"


def test_configs_are_frozen_with_documented_defaults():
    timing = Timing()
    assert (timing.heartbeat_interval, timing.liveness, timing.dead_after, timing.ack_timeout) == (1.0, 3, 10.0, 2.0)
    assert HeadConfig().max_attempts == 3
    provider = ProviderConfig(head=HeadAddress("h"))
    assert (provider.slots, provider.device, provider.compression) == (1, "auto", "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        provider.slots = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        HeadAddress("h").base = 1  # type: ignore[misc]


def test_env_default_uses_the_prefix(monkeypatch):
    assert ENV_PREFIX == "ZCOMPUTE_"
    monkeypatch.setenv("ZCOMPUTE_TEST_VALUE", "42")
    monkeypatch.delenv("ZCOMPUTE_TEST_MISSING", raising=False)
    assert env_default("TEST_VALUE") == "42"
    assert env_default("TEST_MISSING", "d") == "d"
    assert env_default("TEST_MISSING") is None
