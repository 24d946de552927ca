"""The head's read-only HTTP server: dashboard at ``/``, ``/api/state``, a job's events, ``/metrics``.

It runs in its own threads and never touches the loop thread's objects: it reads
``head.snapshot`` (a dict the loop replaces whole every 0.5 s) and a job's
``events.jsonl`` file. Bound to a non-loopback address on a secured head, every
request except the static assets needs an admin or viewer token. See docs/HTTP.md.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import deque
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlsplit

from common.errors import AuthError, TransportError
from common.logs import get_logger
from common.security import verify_token
from head_node.metrics import Metrics, figures

if TYPE_CHECKING:
    from head_node.server import HeadNode

STATIC = Path(__file__).parent / "dashboard"
#: name -> content type; these hold no cluster data, so a browser may load them without a token
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
READ_ROLES = ("admin", "viewer")
MAX_EVENTS = 10_000
HISTORY_SECONDS = 1.0  # one sample of the figures per second ...
HISTORY_SAMPLES = 120  # ... for two minutes: a page opened now draws its charts at once
_JOB_EVENTS = re.compile(r"^/api/jobs/([0-9a-zA-Z_-]{1,64})/events$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a ?token= must not leak to another site
    "Cache-Control": "no-store",
}


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Guard:
    """Who may read: anyone on a loopback bind or an insecure head; else an unrevoked admin/viewer token."""

    def __init__(self, head: "HeadNode"):
        self.head = head
        self.required = not head.config.insecure and head.config.http_host not in LOOPBACK
        self._lock = threading.Lock()
        self.failures = 0

    def check(self, token: str | None) -> None:
        if not self.required:
            return
        try:
            if not token:
                raise AuthError("this dashboard needs a token: send 'Authorization: Bearer TOKEN' or open "
                                "/?token=TOKEN (an admin or viewer token: head-node invite --role viewer)")
            claims = verify_token(self.head.auth.secret, token)
            self.head.auth.registry.check(claims)
        except AuthError as e:
            self._refused()
            raise HttpError(HTTPStatus.UNAUTHORIZED, str(e)) from None
        if claims.role not in READ_ROLES:
            self._refused()
            raise HttpError(HTTPStatus.FORBIDDEN, f"role {claims.role!r} may not read the dashboard "
                                                  f"(admin or viewer may)")

    def _refused(self) -> None:
        with self._lock:
            self.failures += 1


class DashboardServer:
    def __init__(self, head: "HeadNode"):
        self.head = head
        self.log = get_logger("head.http")
        self.guard = Guard(head)
        self.metrics = Metrics(lambda: self.head.snapshot, lambda: self.guard.failures)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        self._history_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.routes: dict[str, Callable[[dict[str, list[str]], Message], tuple[str, bytes]]] = {
            "/": self._index,
            "/index.html": self._index,
            "/api/state": self._state,
            "/api/history": self._history,
            "/metrics": self._metrics,
        }

    def start(self) -> None:
        host, port = self.head.config.http_host, self.head.config.http_port
        try:
            self._httpd = _Server((host, port), self)
        except OSError as e:
            raise TransportError(f"cannot bind the HTTP server on {host}:{port}: {e}") from e
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="head-http",
                             daemon=True),
            threading.Thread(target=self._sample, name="head-http-history", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.log.info("http.listening", url=f"http://{_url_host(host)}:{port}/", token_required=self.guard.required)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._httpd = None

    def _sample(self) -> None:
        last = None
        while not self._stop.wait(HISTORY_SECONDS):
            snap = self.head.snapshot
            if snap.get("time") != last:
                last = snap.get("time")
                sample = {"time": last, "figures": figures(snap, self.guard.failures)}
                with self._history_lock:
                    self.history.append(sample)

    # -- routes: (query, request headers) -> (content type, body), or raise HttpError

    def _index(self, query: dict[str, list[str]], headers: Message) -> tuple[str, bytes]:
        return "text/html; charset=utf-8", (STATIC / "index.html").read_bytes()

    def _state(self, query: dict[str, list[str]], headers: Message) -> tuple[str, bytes]:
        snap = self.head.snapshot
        body = {**snap, "figures": figures(snap, self.guard.failures)}
        return "application/json", json.dumps(body, default=str).encode()

    def _history(self, query: dict[str, list[str]], headers: Message) -> tuple[str, bytes]:
        with self._history_lock:
            samples = list(self.history)
        return "application/json", json.dumps({"samples": samples}).encode()

    def _metrics(self, query: dict[str, list[str]], headers: Message) -> tuple[str, bytes]:
        return self.metrics.render(headers.get("Accept", ""))

    def job_events(self, job_id: str, query: dict[str, list[str]]) -> tuple[str, bytes]:
        """Read the file directly: the loop thread owns EventLog's open handles (and flushes them every tick)."""
        if not any(j["job_id"] == job_id for j in self.head.snapshot.get("jobs", [])):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no job {job_id!r}")
        offset = _int_param(query, "offset", 0, 0, 1 << 62)
        limit = _int_param(query, "limit", 1000, 1, MAX_EVENTS)
        events = read_events(self.head.config.data_dir / "jobs" / job_id / "events.jsonl", offset, limit)
        return "application/json", json.dumps({"events": events, "next_offset": offset + len(events)}).encode()


def read_events(path: Path, offset: int, limit: int) -> list[dict[str, Any]]:
    """Complete lines from line ``offset`` on; a line still being written is left for the next read."""
    events: list[dict[str, Any]] = []
    try:
        src = open(path, encoding="utf-8")
    except FileNotFoundError:
        return events
    with src:
        for i, line in enumerate(src):
            if i < offset:
                continue
            if len(events) >= limit or not line.endswith("\n"):
                break
            events.append(json.loads(line))
    return events


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer, not {raw!r}") from None
    if value < low:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be at least {low}, not {value}")
    return min(high, value)  # a larger page is served in pages of the largest size


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow browser never holds up the head's shutdown

    def __init__(self, address: tuple[str, int], dashboard: DashboardServer):
        self.dashboard = dashboard
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "zcompute"
    sys_version = ""
    timeout = 30  # an idle connection cannot hold a thread forever

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _read_only(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                    b"this server is read-only: GET and HEAD only\n", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only

    def _serve(self, send_body: bool) -> None:
        dashboard = self.server.dashboard
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            asset = url.path.lstrip("/")
            if asset in ASSETS:
                self._reply(HTTPStatus.OK, ASSETS[asset], (STATIC / asset).read_bytes(), send_body)
                return
            dashboard.guard.check(self._token(query))
            route = dashboard.routes.get(url.path)
            match = _JOB_EVENTS.match(url.path)
            if route is not None:
                content_type, body = route(query, self.headers)
            elif match:
                content_type, body = dashboard.job_events(match[1], query)
            else:
                raise HttpError(HTTPStatus.NOT_FOUND, f"nothing at {url.path}")
        except HttpError as e:
            auth = e.status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
            (dashboard.log.warning if auth else dashboard.log.debug)(
                "http.refused", path=url.path, status=e.status.value, reason=str(e), peer=self.client_address[0])
            extra = {"WWW-Authenticate": 'Bearer realm="zcompute"'} if e.status == HTTPStatus.UNAUTHORIZED else {}
            self._reply(e.status, "text/plain; charset=utf-8", f"{e.status.value} {e.status.phrase}: {e}\n".encode(),
                        send_body, extra)
            return
        except Exception as e:  # a bug here must not take the head down; the loop thread is untouched
            dashboard.log.exception("http.error", path=url.path, error=repr(e))
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n", send_body)
            return
        self._reply(HTTPStatus.OK, content_type, body, send_body)

    def _token(self, query: dict[str, list[str]]) -> str | None:
        header = self.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return query.get("token", [None])[0]

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes, send_body: bool = True,
               extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {**_SECURITY_HEADERS, **(extra or {}), "Content-Type": content_type,
                            "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the browser went away: nothing to answer
                pass

    def log_message(self, format: str, *args: Any) -> None:
        self.server.dashboard.log.debug("http.request", peer=self.client_address[0], line=format % args)
