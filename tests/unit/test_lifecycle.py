"""Port choice for a local cluster."""

import random
import socket
from pathlib import Path

import pytest

from common.lifecycle import PORT_RANGE, free_port_base


def test_a_port_base_is_free_and_below_the_ephemeral_range():
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(path.read_text().split()[0]) if path.exists() else 49152  # Windows' and macOS' default
    if low <= PORT_RANGE[1]:
        pytest.skip(f"this host's ephemeral ports start at {low}, inside {PORT_RANGE}")
    for _ in range(20):
        base = free_port_base("127.0.0.1", count=5)
        assert PORT_RANGE[0] <= base and base + 5 <= PORT_RANGE[1]
        socks = [socket.socket() for _ in range(5)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", base + i))  # every port of the base binds
        finally:
            for s in socks:
                s.close()


def test_a_base_around_a_taken_port_is_passed_over(monkeypatch):
    held = socket.socket()
    for port in range(sum(PORT_RANGE) // 2, PORT_RANGE[1]):  # a free port mid-range, then hold it
        try:
            held.bind(("127.0.0.1", port))
            break
        except OSError:
            held.close()
            held = socket.socket()
    tried = []
    proposals = iter([port - 2, port - 4, port + 10])  # two bases that cover the held port, then one that does not

    def randint(a, b):
        tried.append(next(proposals))
        return tried[-1]

    monkeypatch.setattr(random, "randint", randint)
    try:
        assert free_port_base("127.0.0.1", count=5) == port + 10
        assert tried == [port - 2, port - 4, port + 10]
    finally:
        held.close()
