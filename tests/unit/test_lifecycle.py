"""Port choice for a local cluster."""

import socket
from pathlib import Path

import pytest

from common.lifecycle import PORT_RANGE, free_port_base


def _ephemeral_range() -> tuple[int, int]:
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not path.exists():
        pytest.skip("no Linux ephemeral port range to compare with")
    low, high = map(int, path.read_text().split())
    return low, high


def test_a_port_base_is_free_and_outside_the_ephemeral_range():
    low, _ = _ephemeral_range()
    for _ in range(20):
        base = free_port_base("127.0.0.1", count=5)
        assert PORT_RANGE[0] <= base and base + 5 <= min(PORT_RANGE[1], low)
        socks = [socket.socket() for _ in range(5)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", base + i))  # every port of the base binds
        finally:
            for s in socks:
                s.close()


def test_a_taken_port_is_never_part_of_a_base():
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    # take a port inside the range, then ask for bases that could only fit around it
    for port in range(sum(PORT_RANGE) // 2, PORT_RANGE[1]):  # mid-range: many bases would cover it
        try:
            held.close()
            held = socket.socket()
            held.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    try:
        for _ in range(40):  # a base of 1,000 ports would cover the held one about one time in 12
            base = free_port_base("127.0.0.1", count=1000)
            assert not base <= port < base + 1000
    finally:
        held.close()
