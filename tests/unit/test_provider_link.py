"""The provider's side of the head's link figure (``Provider._on_link``): its results are encoded for it."""

from __future__ import annotations

import types

from common.provider.runtime import Provider


def provider(link_mbit=None):
    return types.SimpleNamespace(config=types.SimpleNamespace(link_mbit=link_mbit),
                                 out=types.SimpleNamespace(link_bits={}))


def test_the_head_s_figure_sets_the_speed_its_results_are_encoded_for():
    p = provider()
    Provider._on_link(p, 20.0)
    assert p.out.link_bits == {None: 20e6}  # PUSH to the head: topic None
    for unknown in (None, 0.0, -5.0):  # registered afresh and not measured yet, or nonsense: back to the guess
        Provider._on_link(p, 20.0)
        Provider._on_link(p, unknown)
        assert p.out.link_bits == {}


def test_the_provider_s_own_link_mbit_wins():
    p = provider(link_mbit=5.0)  # its uplink is slower than the head's reading of the downlink
    Provider._on_link(p, 1000.0)
    assert p.out.link_bits == {}  # codec.set_link_speed(5e6), set at start, stays in force
