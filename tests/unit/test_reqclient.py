"""``ReqChannel``, the Lazy Pirate client: what a request retried until it is answered tells the operator."""

from __future__ import annotations

import threading

import pytest
import zmq

from common import protocol, reqclient
from common.errors import HeadUnreachable
from common.lifecycle import free_port_base
from common.reqclient import WARN_EVERY, ReqChannel
from tests.helpers import wait_until


class Recorder:
    """Stands in for the module's logger (the suite's structlog set-up may drop or cache what it logs)."""

    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **fields: self.events.append((level, event, fields))


def test_a_request_retried_until_answered_warns_at_its_first_timeout_and_then_now_and_then(monkeypatch):
    """A provider started with a wrong head address registers for ever: its log must say so, not stay silent."""
    log = Recorder()
    monkeypatch.setattr(reqclient, "log", log)
    ctx, stop = zmq.Context(), threading.Event()
    url = f"tcp://127.0.0.1:{free_port_base(count=1)}"  # nothing listens there
    channel = ReqChannel(ctx, url, timeout=0.01, retries=None, stop=stop)

    def warnings():
        return [fields for level, _, fields in list(log.events) if level == "warning"]

    def stop_after_two():
        try:
            wait_until(lambda: len(warnings()) >= 2, timeout=10)
        finally:  # (without the warnings: stop anyway, and the asserts below say what was missing)
            stop.set()

    watcher = threading.Thread(target=stop_after_two, daemon=True)
    watcher.start()
    try:
        with pytest.raises(HeadUnreachable):
            channel.request(protocol.Stats())
    finally:
        stop.set()
        watcher.join(25)
        channel.close()
        ctx.term()
    assert {event for level, event, _ in log.events if level == "warning"} == {"request.no_reply"}
    first, second = warnings()[:2]
    assert (first["url"], first["tries"], second["tries"]) == (url, 1, 1 + WARN_EVERY)
    assert "is the address right" in first["detail"]
    assert all(w["tries"] % WARN_EVERY == 1 for w in warnings())  # the tries in between: debug
    assert any(level == "debug" for level, _, _ in log.events)
