"""The control plane process: `docklet-cp`. HTTP server, controller loop, repo watcher.

The HTTP server is cheroot, hardened: a request must arrive within its own
time (`Connection`), one address holds a bounded share of the threads while
its requests arrive (`Readers`), what the server answers itself has the API's
JSON error shape (`Request`), the API keeps its own body limit (`BodyLimit`),
and whatever keeps it from hearing a node makes it deaf (`Liveness.deaf_until`).
"""

from __future__ import annotations

import _pyio
import gc
import io
import json
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import click
from cheroot import errors, makefile, wsgi
from cheroot import server as cheroot

from docklet import __version__
from docklet.common import defaults, logs, settings
from docklet.common.errors import RequestTimeout
from docklet.cp import admin
from docklet.cp.controller import Controller
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig

log = logging.getLogger(__name__)


OVERLOAD_RETRY_AFTER = 1  # seconds a client told 503 waits (agents add jitter)
LISTEN_BACKLOG = 1024  # connections the kernel holds for the accepting thread
SOCKET_TIMEOUT = 10  # seconds a worker waits on one read or write of a client's socket
MAX_HEADER_BYTES = 64 * 1024
PARKED_BYTES = 256 * 1024  # what a request waiting without a thread may have sent, kept
DRAIN_WAIT = 1.0  # seconds of waiting allowed for a body the app answered without reading
OPEN_FILES = 8192  # the open-file limit the CP raises itself to, as far as it may

# The API's error codes for what the server itself answers, before any WSGI app runs.
SERVER_CODES = {
    400: "bad_request",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    414: "too_large",
    500: "internal",
    501: "not_implemented",
    503: "overloaded",
    505: "http_version_not_supported",
}


def timeout_message(read_timeout: float) -> str:
    return (
        f"the request did not arrive within {read_timeout:g}s (headers and body, plus 1s"
        f" per {defaults.READ_RATE // 1024} KiB of body); send it whole"
    )


def error_body(status: int, code: str, message: str) -> bytes:
    """The API's one JSON error shape."""
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


def json_error(
    start_response: Any, status: str, code: str, message: str, headers: Iterable[tuple[str, str]]
) -> list[bytes]:
    """A WSGI answer in the API's JSON error shape."""
    body = error_body(int(status[:3]), code, message)
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


class Overload:
    """WSGI middleware: a 503 with Retry-After, at once, while requests wait too long.

    `waited` says how long the oldest request waiting for a worker thread has
    waited; beyond `limit` seconds the CP is saturated, and answering quickly
    (in the API's one JSON error shape) drains the queue instead of letting
    every client time out. While it refuses, it cannot hear heartbeats:
    `refused_at` lets liveness give every node that time back.
    """

    def __init__(self, app: Any, waited: Callable[[], float], limit: float) -> None:
        self.app, self.waited, self.limit = app, waited, limit
        self.refused = 0  # answers given as 503, for the logs and the benchmark
        self.refused_at = 0.0  # time.time() of the latest

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        waited = self.waited()
        if waited <= self.limit:
            return self.app(environ, start_response)
        self.refused += 1
        self.refused_at = time.time()
        if self.refused % 1000 == 1:
            log.warning(
                "overloaded: requests wait %.1fs for a thread; answering 503 (%d so far)",
                waited,
                self.refused,
            )
        return json_error(
            start_response,
            "503 Service Unavailable",
            "overloaded",
            "the control plane is overloaded; retry after a moment",
            [("Retry-After", str(OVERLOAD_RETRY_AFTER))],
        )


class BodyLimit:
    """WSGI middleware in front of the API (not Git): the API's own body limit.

    The server takes bodies up to the larger of --max-body and --max-git-body
    (a push is larger than any API call); an API request announcing more than
    --max-body is answered 413 in the API's error shape before a byte of its
    body is read. A chunked body is read here up to the limit and handed on
    with its length: Bottle would parse the chunks again.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                length = self._unchunk(environ)
            else:
                length = int(environ.get("CONTENT_LENGTH") or 0)  # cheroot refused a bad one
        except RequestTimeout as exc:
            return json_error(start_response, "408 Request Timeout", exc.code, exc.message, [])
        if length > self.limit:
            message = f"request body is over {self.limit} bytes (the CP's --max-body)"
            return json_error(start_response, "413 Payload Too Large", "too_large", message, [])
        return self.app(environ, start_response)

    def _unchunk(self, environ: dict[str, Any]) -> int:
        try:
            data = environ["wsgi.input"].read(self.limit + 1)
        except RequestTimeout:
            raise
        except OSError:  # over the server's own cap, which is at least ours
            return self.limit + 1
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        del environ["HTTP_TRANSFER_ENCODING"]
        return len(data)


class Readers:
    """The threads each address holds while its requests are still arriving.

    A client sending its request slowly holds a thread for as long as it takes
    (up to --read-timeout): past `slots` at once, an address's requests wait for
    the rest of their bytes in the selector, without a thread (`Connection`), so
    one address cannot take every thread.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.parked = 0  # times a request waited without a thread, for the logs
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> bool:
        """One more thread for `address`, if its share allows."""
        with self._lock:
            held = self._held.get(address, 0)
            if held >= self.slots:
                return False
            self._held[address] = held + 1
            return True

    def give_back(self, conn: Connection) -> None:
        """`conn`'s request has arrived (once; the app may read a body on another thread)."""
        with self._lock:
            if not conn.reading:
                return
            conn.reading = False
            address = conn.remote_addr or ""
            held = self._held.pop(address, 0) - 1
            if held > 0:
                self._held[address] = held

    def held(self, address: str) -> int:
        return self._held.get(address, 0)


def arrived_whole(data: bytes) -> bool:
    """Whether `data` is a whole request: its headers, and the body they announce.

    A chunked body never counts as arrived (its end is not looked for), nor does
    one announced longer than what is there; a bad length is refused by cheroot
    at once, without waiting, so it counts as arrived.
    """
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True
    return len(body) >= length


class DeadlineSocket(socket.SocketIO):
    """A connection's socket reads, each allowed only what is left of its request's time.

    What counts is the time spent waiting for the client's bytes, not the CP's own
    time between reads (a busy CP does not make a client slow). Bytes gathered
    while the request waited without a thread (`pending`) are read first.
    """

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        super().__init__(sock, "rb")
        self.conn = conn
        self.pending = bytearray()

    def gather(self) -> bool:
        """Take what the client has sent so far, without waiting; whether it has gone."""
        sock = self.conn.socket
        sock.settimeout(0)
        try:
            while len(self.pending) < PARKED_BYTES:
                chunk = sock.recv(PARKED_BYTES)
                if not chunk:
                    return True
                self.pending += chunk
        except (BlockingIOError, InterruptedError):
            pass  # all of it, for now
        except OSError:
            return True
        finally:
            sock.settimeout(SOCKET_TIMEOUT)
        return False

    def readinto(self, b: Any) -> int | None:
        conn = self.conn
        if self.pending:
            got = min(len(b), len(self.pending))
            b[:got] = self.pending[:got]
            del self.pending[:got]
            conn.arrived += got
            return got
        conn.before_read()
        started = time.monotonic()
        try:
            got = super().readinto(b)
        finally:
            conn.waited += time.monotonic() - started
            # Writes wait as long as they always did: the deadline is for the request.
            conn.socket.settimeout(SOCKET_TIMEOUT)
        conn.arrived += got or 0
        return got


class DeadlineReader(makefile.StreamReader):
    """cheroot's buffered socket reader, over a `DeadlineSocket`."""

    def __init__(self, sock: socket.socket, conn: Connection, bufsize: int) -> None:
        _pyio.BufferedReader.__init__(self, DeadlineSocket(sock, conn), bufsize)
        self.bytes_read = 0


class Request(cheroot.HTTPRequest):
    """cheroot's request, whose own answers (400, 408, 413, 414, 505…) have the API's
    JSON error shape; a 408 or 429 to an address nodes speak from makes the CP deaf."""

    def simple_response(self, status: str, msg: str = "", retry_after: int = 0) -> None:
        code = int(str(status)[:3])
        server: HTTPServer = self.server
        if code in (408, 429):
            server.liveness.refused(self.conn.remote_addr or "")
        head = [f"{server.protocol} {status}", "Content-Type: application/json"]
        body = error_body(code, SERVER_CODES.get(code, "http_error"), self._message(code, msg))
        head.append(f"Content-Length: {len(body)}")
        if code >= 400:  # nothing more is read from this connection
            self.close_connection = True
            head.append("Connection: close")
        if retry_after:
            head.append(f"Retry-After: {retry_after}")
        try:
            self.conn.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        except OSError as exc:
            if exc.args[0] not in errors.socket_errors_to_ignore:
                raise

    def read_request_headers(self) -> bool:
        if not super().read_request_headers():
            return False
        if int(self.inheaders.get(b"Content-Length", 0)) < 0:  # cheroot read it as a number
            self.simple_response("400 Bad Request", "Content-Length must not be negative")
            return False
        return True

    def send_headers(self) -> None:
        # cheroot reads on what the app left of a body, to keep the connection: what
        # has not come within DRAIN_WAIT is not waited for.
        if getattr(self.rfile, "remaining", 0) > 0:
            self.conn.wait_cap = self.conn.waited + DRAIN_WAIT
        super().send_headers()

    def _message(self, code: int, msg: str) -> str:
        server: HTTPServer = self.server
        if code == 413 and "header" not in msg:
            if getattr(self, "path", b"").startswith(b"/git/"):
                return f"request body is over {server.git_max_body} bytes (--max-git-body)"
            return f"request body is over {server.api_max_body} bytes (the CP's --max-body)"
        if code == 408:
            return timeout_message(server.read_timeout)
        return msg or {
            500: "internal error; the control plane log has details",
            501: "only the chunked transfer coding is supported",
            505: "only HTTP/1.0 and HTTP/1.1 are spoken here",
        }.get(code, status_text(code))


def status_text(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.lower()
    except ValueError:
        return f"HTTP {code}"


class Connection(cheroot.HTTPConnection):
    """A client's connection, whose every request must arrive within a time of its own.

    cheroot reads a request on a worker thread, with a timeout per read: a
    client sending a header line every few seconds would hold the thread for as
    long as it liked. Here each request's headers and body must arrive within
    --read-timeout of waiting in total (plus a second per READ_RATE bytes of
    body), and an address holds at most its share of the threads while its
    requests are still arriving (`Readers`). Past it, a request that has not
    arrived whole goes back to the selector (cheroot's keep-alive list), its
    bytes so far taken, and a thread looks again when more come: it waits there
    for nothing but its --read-timeout, and holds no thread meanwhile.
    """

    RequestHandlerClass = Request

    def __init__(self, server: HTTPServer, sock: socket.socket, mf: Any = None) -> None:
        self.waited = 0.0  # seconds spent waiting for the request being read, so far
        self.wait_cap = float("inf")  # ... and the most it may be, once the app answered
        self.arrived = 0  # bytes of it so far
        self.reading = False  # counted against its address's share
        self.parked = False  # waiting in the selector for the rest of its request
        self.begun = 0.0  # time.monotonic() the request's first byte came, for a parked one
        self.detached = False  # its socket was handed to the agent channels (`Gateway.detach`)
        super().__init__(server, sock, self._makefile)

    def close(self) -> None:
        if self.detached:  # the socket lives on elsewhere: cheroot must not shut it down
            return
        super().close()

    def _makefile(self, sock: socket.socket, mode: str = "r", bufsize: int = -1) -> Any:
        if "r" in mode:
            return DeadlineReader(sock, self, bufsize)
        return makefile.MakeFile(sock, mode, bufsize)

    def communicate(self) -> bool:
        server: HTTPServer = self.server
        server.note_wait(getattr(self, "docklet_queued_at", 0.0))
        if not self.parked:  # a new request
            self.waited, self.arrived, self.wait_cap = 0.0, 0, float("inf")
            self.begun = time.monotonic()
        self.parked = False
        self.reading = server.readers.take(self.remote_addr or "")
        if not self.reading:
            verdict = self._past_share()
            if verdict is not None:
                return verdict
        try:
            return bool(super().communicate())
        finally:
            self.read_done()

    def _past_share(self) -> bool | None:
        """For a request past its address's share: None to serve it now, else what
        `communicate` returns (True: parked, kept open; False: answered or gone, closed)."""
        raw: DeadlineSocket = self.rfile.raw
        if self.rfile.has_data():  # a pipelined request, read already: kept with the rest
            raw.pending[:0] = self.rfile.read(len(self.rfile.peek(0)))
        gone = raw.gather()
        if arrived_whole(raw.pending):
            return None
        if gone:
            return False
        if time.monotonic() - self.begun > self.server.read_timeout:
            self.RequestHandlerClass(self.server, self).simple_response("408 Request Timeout")
            return False
        if b"\r\n\r\n" not in raw.pending and len(raw.pending) > MAX_HEADER_BYTES:
            self.RequestHandlerClass(self.server, self).simple_response(
                "413 Request Entity Too Large", f"headers over {MAX_HEADER_BYTES} bytes"
            )
            return False
        if len(raw.pending) >= PARKED_BYTES:  # a large body, coming fast: served, and
            self.wait_cap = DRAIN_WAIT  # it must keep coming
            return None
        self._park()
        return True

    def before_read(self) -> None:
        allowed = self.server.read_timeout + self.arrived / defaults.READ_RATE
        left = min(allowed, self.wait_cap) - self.waited
        if left <= 0:
            raise TimeoutError("timed out")  # what cheroot answers 408
        self.socket.settimeout(min(left, SOCKET_TIMEOUT))

    def read_done(self) -> None:
        """The request has arrived: its thread no longer counts against its address."""
        self.server.readers.give_back(self)

    def _park(self) -> None:
        """Back to the selector until more of the request comes (the worker puts it there)."""
        self.parked = True
        readers: Readers = self.server.readers
        readers.parked += 1
        if readers.parked % 10_000 == 1:
            log.warning(
                "http: %s holds %d threads with requests still arriving; more of its"
                " requests wait without one (%d times so far)",
                self.remote_addr,
                readers.slots,
                readers.parked,
            )


class Arriving:
    """A request body (wsgi.input) that says when its last byte has been read, and
    raises RequestTimeout when the client took too long to send it."""

    def __init__(self, body: Any, req: Request) -> None:
        self.body, self.req = body, req

    def _check(self, data: bytes) -> bytes:
        body = self.body
        if not data or getattr(body, "remaining", None) == 0 or getattr(body, "closed", False):
            self.req.conn.read_done()
        return data

    def _late(self) -> RequestTimeout:
        self.req.close_connection = True  # the rest of the body is not waited for
        self.req.conn.read_done()
        return RequestTimeout(timeout_message(self.req.server.read_timeout))

    def read(self, size: int | None = None) -> bytes:
        try:
            return self._check(self.body.read(size))
        except TimeoutError:
            raise self._late() from None

    def readline(self, size: int | None = None) -> bytes:
        try:
            return self._check(self.body.readline(size))
        except TimeoutError:
            raise self._late() from None

    def readlines(self, hint: int = 0) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def close(self) -> None:
        self.body.close()


class Gateway(wsgi.Gateway_10):
    """cheroot's WSGI gateway, telling the connection when its request has arrived:
    with the headers when there is no body, else once the app has read it (or the
    request is over: a body the app left unread is still being read)."""

    upgraded: Callable[[socket.socket, bytes], None] | None = None  # `upgrade`'s adopter

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        conn: Connection = self.req.conn
        if self.req.chunked_read or int(env.get("CONTENT_LENGTH") or 0) > 0:
            env["wsgi.input"] = Arriving(env["wsgi.input"], self.req)
        else:
            conn.read_done()  # a long-poll waits, but its request is in
        env["docklet.detach"] = self.detach
        env["docklet.upgrade"] = self.upgrade
        env["docklet.gone"] = self.gone
        return env

    def upgrade(self, adopt: Callable[[socket.socket, bytes], None]) -> None:
        """The app answers 101 Switching Protocols: once that is written, the socket is
        detached (as `detach`) and handed to `adopt` with any bytes already read past the
        request. The app's own answer has no body (a 101 has none)."""
        self.upgraded = adopt

    def respond(self) -> None:
        super().respond()
        adopt = self.upgraded
        if adopt is not None and bytes(self.req.status[:3]) == b"101":
            pending = _read_ahead(self.req.conn.rfile)
            adopt(self._take_socket(), pending)

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        if status[:3] == "101":  # a 101 has no body: no Content-Length (Bottle adds one)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return super().start_response(status, headers, exc_info)

    def gone(self) -> bool:
        """Whether the client hung up: its socket reads as ended. A stream waiting for
        something to say asks, so it need not wait for a write to fail (two writes, as
        the first after a hang-up still succeeds)."""
        sock = self.req.conn.socket
        try:
            poller = select.poll()  # not select(): descriptors past 1024 are usual here
            poller.register(sock, select.POLLIN)
            readable = poller.poll(0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # closed meanwhile
            return True

    def detach(self) -> socket.socket | None:
        """Hand this connection's socket over (an agent's channel, after its first frame was
        written): cheroot ends the request without its last chunk, its worker thread goes
        back to the pool, and the connection is closed without touching the socket. The
        socket returned is a new object owning the descriptor, non-blocking; None when the
        answer is not chunked (an HTTP/1.0 client), which then ends as usual."""
        if not self.req.chunked_write:  # HTTP/1.0: no chunks to frame with; it ends here
            return None
        self.req.chunked_write = False  # no `0\r\n\r\n`: the answer goes on, from elsewhere
        return self._take_socket()

    def _take_socket(self) -> socket.socket:
        """This connection's socket, as a new non-blocking object; cheroot lets go of it."""
        req, conn = self.req, self.req.conn
        req.close_connection = True  # the worker drops the connection, never reads it again
        conn.read_done()
        conn.detached = True
        sock = socket.socket(fileno=conn.socket.detach())
        sock.setblocking(False)
        return sock


def _read_ahead(rfile: DeadlineReader) -> bytes:
    """What the client sent past its request and cheroot already read (never waits)."""
    data = rfile.read(len(rfile.peek(0))) if rfile.has_data() else b""
    raw: DeadlineSocket = rfile.raw
    data += bytes(raw.pending)
    raw.pending.clear()
    return data


class HTTPServer(wsgi.Server):
    """cheroot's WSGI server, with `Connection`s, the API's error shape, and ears.

    A new connection waits in the selector until it sends something, not on a
    worker thread. A request that waited too long for a thread tells liveness
    the CP may have missed heartbeats (`Liveness.deaf`).
    """

    ConnectionClass = Connection

    def __init__(self, cp: ControlPlane, app: Any) -> None:
        config = cp.config
        super().__init__(
            (config.host, config.port),
            app,
            numthreads=config.threads,
            max=config.threads,
            server_name=f"docklet/{__version__}",
            request_queue_size=LISTEN_BACKLOG,
            timeout=SOCKET_TIMEOUT,
        )
        self.gateway = Gateway
        self.liveness = cp.liveness
        self.readers = Readers(config.reading_slots)
        self.read_timeout = config.read_timeout
        self.api_max_body, self.git_max_body = config.max_body, config.max_git_body
        self.max_request_body_size = config.server_max_body  # refused before a WSGI app reads
        self.max_request_header_size = MAX_HEADER_BYTES

    def process_conn(self, conn: Connection) -> None:
        if conn.last_used is None:  # new: watched by the selector until it sends something
            self._connections.put(conn)
            return
        conn.docklet_queued_at = time.time()  # type: ignore[attr-defined]
        super().process_conn(conn)

    def note_wait(self, queued_at: float) -> None:
        """A worker took a request that waited since `queued_at`: too long, and the CP
        may have missed heartbeats meanwhile."""
        if queued_at and time.time() - queued_at > defaults.CP_DEAF_WAIT:
            self.liveness.deaf()


class Server:
    """The CP's HTTP server: cheroot, CherryPy's WSGI server, in this process.

    One thread watches every connection through the OS's selector (epoll on
    Linux), so an open connection costs nothing until it has a request; a
    pool of `--threads` workers runs the requests. (waitress, before it,
    walked every open connection in Python on every turn of its loop: at a
    thousand agents that loop took most of a core, see docs/architecture.md.)
    """

    def __init__(self, cp: ControlPlane) -> None:
        from docklet.cp.http.api import make_app
        from docklet.cp.http.githttp import GitHTTP
        from docklet.cp.ui.mount import dashboard

        config = cp.config
        cp.polls.limit(config.long_poll_slots)  # this server's threads, not the defaults
        self.app = Overload(
            # /git/apps.git: clone and push over HTTP; the rest is the API (and the dashboard
            # at / and /ui/), with its own limit.
            GitHTTP(cp, BodyLimit(dashboard(cp, make_app(cp)), config.max_body)),
            self.waited,
            config.overload_wait,
        )
        # Its 503s, and requests that wait too long, make the CP deaf for a while; the
        # 503s show in GET /api/version's metrics.
        cp.liveness.overload = self.app
        cp.liveness.unheard = lambda: self.waited() > defaults.CP_DEAF_WAIT
        self.http = HTTPServer(cp, self.app)
        self._channels = cp.channels  # agents' detached sockets: closed with the server
        self._pool = self.http.requests
        self._queue: Any = getattr(self._pool, "_queue", None)
        if self._queue is None:  # another cheroot: no queue to watch, no 503s
            log.warning("this cheroot has no request queue to watch: overload answers are off")
        self.http.error_log = self._error_log
        self.http.prepare()  # binds: a port in use fails here, before anything runs

    @property
    def port(self) -> int:
        return int(self.http.bind_addr[1])

    def waited(self) -> float:
        """How long the oldest request waiting for a worker thread has waited."""
        try:
            return time.time() - self._queue.queue[0].docklet_queued_at
        except (AttributeError, IndexError):  # nothing waits, or a worker took it meanwhile
            return 0.0

    def reading(self, address: str) -> int:
        """Threads `address` holds with requests still arriving."""
        return self.http.readers.held(address)

    @staticmethod
    def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's own messages (a client gone mid-request, a bad request line) go to the
        CP's log, not to stderr; with their traceback when cheroot gives one."""
        log.log(level, "http: %s", msg, exc_info=traceback)

    def run(self) -> None:
        """Serve until `stop()`."""
        self.http.serve()

    def stop(self) -> None:
        self.http.stop()
        self._channels.stop()


def raise_fd_limit(wanted: int = OPEN_FILES) -> None:
    """Let the process open `wanted` descriptors, as far as the hard limit allows."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)


def serve(config: CPConfig) -> None:
    raise_fd_limit()  # a thousand agents' connections, Git's pipes, SQLite's files
    cp = ControlPlane(config)
    # What the process holds once started (modules, classes, settings) is never
    # garbage: frozen, it is left out of the oldest generation's collections,
    # which stop every thread (a write transaction included) for their length.
    gc.freeze()
    # A thread back from a socket or SQLite call waits for the GIL until its holder lets
    # go: at most this long (Python's default is 5 ms). Most requests here make many
    # such calls, so waiting less for each is what their latency is made of.
    sys.setswitchinterval(defaults.GIL_SWITCH_INTERVAL)
    stop = threading.Event()
    controller = Controller(cp)
    for name, target in (("controller", controller.run), ("watch_repo", controller.watch_repo)):
        threading.Thread(target=target, args=(stop,), daemon=True, name=name).start()
    server = Server(cp)
    log.info(
        "control plane %s listening on http://%s:%s (data in %s, cluster %s)",
        __version__,
        config.host,
        server.port,
        config.data_dir,
        cp.cluster_id,
    )
    cp.tokens.announce_bootstrap(f"http://{config.host}:{server.port}")
    try:
        server.run()
    finally:
        stop.set()
        server.stop()


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@settings.options(CPConfig)
@click.version_option(__version__, prog_name="docklet-cp")
@click.pass_context
def main(ctx: click.Context, **options: Any) -> None:
    """Run the Docklet control plane; with a command, administer its data offline.

    Example: docklet-cp --data-dir ./data --port 8080
    """
    if ctx.invoked_subcommand is not None:  # `docklet-cp token create …`: no server
        ctx.obj = {"data_dir": options["data_dir"]}
        return
    config = settings.build(CPConfig, options)
    logs.setup(config.log_level, config.log_format)
    try:
        serve(config)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {config.host}:{config.port}: {exc}") from exc
    except KeyboardInterrupt:
        log.info("control plane stopped")


main.add_command(admin.token)
main.add_command(admin.secrets_group)
