"""The provider's heartbeat: its own thread and REQ socket, so a long shard never silences it."""

from __future__ import annotations

import os
import threading
import time

import zmq

from common import protocol
from common.errors import ZComputeError
from common.logs import get_logger
from common.provider.book import TaskBook
from common.reqclient import ReqChannel

log = get_logger(__name__)


class HeartbeatThread(threading.Thread):
    def __init__(self, ctx: zmq.Context, url: str, provider_id: str, book: TaskBook, *,
                 interval: float, timeout: float, on_unknown, on_cancel, stop: threading.Event,
                 on_forget=lambda job_ids: None, on_link=lambda mbit: None,
                 limits, curve=None, token=None, draining_fn=lambda: False):
        super().__init__(name="heartbeat", daemon=True)
        self.provider_id, self.book, self.interval = provider_id, book, interval
        self.on_unknown, self.on_cancel, self.on_forget, self.stop_event = on_unknown, on_cancel, on_forget, stop
        self.on_link = on_link
        self.draining_fn = draining_fn
        self.epoch = ""
        self.channel = ReqChannel(ctx, url, timeout=timeout, retries=0, limits=limits, curve=curve, stop=stop,
                                  token=token)
        self.last_reply: float | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval):
                self.beat()
        finally:
            self.channel.close()

    def beat(self) -> None:
        running, outbox, free = self.book.snapshot()
        msg = protocol.Heartbeat(provider_id=self.provider_id, epoch=self.epoch, running=running, outbox=outbox,
                                 free_slots=free, load=_load(), memory_used=_rss(),
                                 draining=self.draining_fn(), computed=self.book.computed)
        try:
            reply = self.channel.request(msg)
        except ZComputeError as e:  # the channel reopens its socket; the next beat tries again
            log.warning("heartbeat.no_reply", provider_id=self.provider_id, error=str(e))
            return
        if not isinstance(reply, protocol.HeartbeatReply):
            return
        self.last_reply = time.monotonic()
        self.book.acknowledge(reply.acked)
        for key in reply.cancel:
            self.on_cancel(key)
        if reply.forget:
            self.on_forget(reply.forget)
        if reply.known:
            self.on_link(reply.link_mbit)
        if not reply.known or reply.epoch != self.epoch:
            log.info("heartbeat.unknown", provider_id=self.provider_id, head_epoch=reply.epoch, our_epoch=self.epoch)
            self.on_unknown(reply.epoch)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
