"""``ReqChannel``, the Lazy Pirate client: what a request retried until it is answered tells the operator."""

from __future__ import annotations

import threading

import pytest
import zmq
from structlog.testing import capture_logs

from common import protocol
from common.errors import HeadUnreachable
from common.lifecycle import free_port_base
from common.reqclient import WARN_EVERY, ReqChannel
from tests.helpers import wait_until


def test_a_request_retried_until_answered_warns_at_its_first_timeout_and_then_now_and_then():
    """A provider started with a wrong head address registers for ever: its log must say so, not stay silent."""
    ctx, stop = zmq.Context(), threading.Event()
    url = f"tcp://127.0.0.1:{free_port_base(count=1)}"  # nothing listens there
    channel = ReqChannel(ctx, url, timeout=0.01, retries=None, stop=stop)
    with capture_logs() as logs:
        def warnings():
            return [e for e in list(logs) if e["event"] == "request.no_reply"]

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
    first, second = warnings()[:2]
    assert (first["log_level"], first["url"], first["tries"], second["tries"]) == ("warning", url, 1, 1 + WARN_EVERY)
    assert "is the address right" in first["detail"]
    quiet = [e for e in logs if e["event"] == "request.retry"]  # the tries in between: debug only
    assert quiet and all(e["log_level"] == "debug" for e in quiet)
