"""The head's link probes (``head_node.linkprobe``): three probes, the gaps between their acknowledgements."""

import pytest

from head_node.linkprobe import MIN_GAP, PROBE_BYTES, LinkProbes


def test_the_longer_gap_between_acknowledgements_gives_the_speed():
    probes = LinkProbes()
    small, big, big2 = probes.start("p")
    assert not small.arrays and big.arrays["pad"].nbytes == big2.arrays["pad"].nbytes == PROBE_BYTES
    assert all(probes.owns("p", m.probe_id) for m in (small, big, big2))
    assert not probes.owns("q", small.probe_id) and not probes.owns("p", "readiness-probe")
    assert probes.acked("p", small.probe_id, 10.0) is None  # one is not enough
    assert probes.acked("p", small.probe_id, 10.5) is None  # a duplicate keeps the first time
    assert probes.acked("p", big.probe_id, 10.001) is None
    # the first big one came through a shaper's burst in 1 ms, the second at the shaper's rate in 100 ms
    assert probes.acked("p", big2.probe_id, 10.101) == pytest.approx(PROBE_BYTES * 8 / 0.1)
    assert not probes.owns("p", big.probe_id)  # done: later acknowledgements are not link probes


def test_a_gap_too_short_to_time_reads_as_the_fastest_link_and_forget_drops_a_probe():
    probes = LinkProbes()
    ids = [m.probe_id for m in probes.start("p")]
    for probe_id in reversed(ids):  # even out of order
        bits = probes.acked("p", probe_id, 5.0)
    assert bits == PROBE_BYTES * 8 / MIN_GAP
    small = probes.start("p")[0]
    probes.forget("p")
    assert not probes.owns("p", small.probe_id)


def test_the_provider_s_clock_is_used_when_every_acknowledgement_carries_it():
    probes = LinkProbes()
    ids = [m.probe_id for m in probes.start("p")]
    # batched on the way back: all three reach us at once, but the provider decoded them 21 ms apart
    for probe_id, received in zip(ids, (7.0, 7.021, 7.042)):
        bits = probes.acked("p", probe_id, 50.0, received)
    assert bits == pytest.approx(PROBE_BYTES * 8 / 0.021)
    ids = [m.probe_id for m in probes.start("p")]
    for probe_id, now, received in zip(ids, (1.0, 1.01, 1.02), (7.0, 0.0, 7.5)):  # one did not say: ours
        bits = probes.acked("p", probe_id, now, received)
    assert bits == pytest.approx(PROBE_BYTES * 8 / 0.01)


def test_probes_not_all_acknowledged_go_out_again_then_are_given_up():
    from head_node.linkprobe import RETRY_AFTER, TRIES

    probes = LinkProbes()
    first = probes.start("p", now=100.0)
    probes.start("q", now=100.0 + RETRY_AFTER)  # a later one is not due yet
    probes.acked("p", first[0].probe_id, 100.0)  # one of three came back; the others were dropped
    assert probes.overdue(100.0 + RETRY_AFTER - 1) == ([], [])
    assert probes.overdue(100.0 + RETRY_AFTER) == (["p"], [])
    for attempt in range(2, TRIES + 1):
        again = probes.start("p", now=100.0 + attempt * RETRY_AFTER)
        assert not probes.owns("p", first[1].probe_id) and probes.owns("p", again[1].probe_id)  # fresh ids
    assert probes.overdue(100.0 + (TRIES + 1) * RETRY_AFTER) == (["q"], ["p"])  # p: the third try is done
    assert not probes.owns("p", again[0].probe_id)
    # a provider that answers a retry is measured as at the first try
    probes.start("q", now=500.0)
    bits = [probes.acked("q", m.probe_id, 500.0, received) for m, received in
            zip(probes.start("q", now=500.0), (1.0, 1.01, 1.02))]
    assert bits[-1] == pytest.approx(PROBE_BYTES * 8 / 0.01)
