"""Hostile HTTP clients, for the tests and benchmarks/slow_clients.py: real sockets on loopback.

`SlowClients` holds many connections from one address, each sending its
request a header line every few seconds and never finishing it; `Repeat`
makes one call again and again (a simulated agent's heartbeat, a health
probe, a wrong token) and times every answer. Both run in their own thread,
stop when told, and close every socket they opened.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import random
import selectors
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

REQUEST_LINE = b"GET /api/health HTTP/1.1\r\nHost: docklet\r\n"


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 5.0,
) -> tuple[int | str, Any, float]:
    """One HTTP call from `source`, on a new connection as the agents make them:
    (status, the JSON answer or its text, seconds); status is "timeout" or "error" when
    no answer came."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout, source_address=(source, 0)
    )
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        text = answer.read().decode(errors="replace")
        status: int | str = answer.status
    except TimeoutError:
        return "timeout", None, time.monotonic() - started
    except OSError as exc:
        return "error", str(exc), time.monotonic() - started
    finally:
        conn.close()
    with contextlib.suppress(ValueError):
        return status, json.loads(text), time.monotonic() - started
    return status, text, time.monotonic() - started


class Repeat(threading.Thread):
    """`call(...)` every `every` seconds until `stop()`; each answer kept as (at, status, s)."""

    def __init__(self, every: float, *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.every, self.args, self.kwargs = every, args, kwargs
        self.answers: list[tuple[float, int | str, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            status, _, took = call(*self.args, **self.kwargs)
            self.answers.append((time.monotonic(), status, took))
            self._stop_event.wait(self.every)

    def stop(self, wait: bool = True) -> None:
        self._stop_event.set()
        if wait:
            self.join(timeout=30)

    def statuses(self) -> collections.Counter[int | str]:
        return collections.Counter(status for _, status, _ in self.answers)

    def seconds(self) -> list[float]:
        return [took for _, _, took in self.answers]


class SlowClients(threading.Thread):
    """`count` connections from `source`, each sending one more header line every `every`
    seconds and never the blank line that ends the request.

    One thread drives them all through a selector. A connection the server answers or
    closes is counted by what it got (the answer's status, "closed", "reset") and opened
    again `every` seconds later, as a hostile client would.
    """

    def __init__(self, url: str, count: int, source: str = "127.0.0.2", every: float = 3.0) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.count, self.source, self.every = count, source, every
        self.answers: collections.Counter[str] = collections.Counter()
        self.opened = 0
        self._next: dict[socket.socket, float] = {}  # each open connection's next line
        self._reopen: list[float] = []  # when each closed one opens again
        self._selector = selectors.DefaultSelector()
        self._stop_event = threading.Event()

    @property
    def open_now(self) -> int:
        return len(self._next)

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self._open(first=True)
            while not self._stop_event.is_set():
                self._turn()
        finally:
            for sock in list(self._next):
                self._close(sock)
            self._selector.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def _open(self, first: bool = False) -> None:
        sock = socket.socket()
        try:
            sock.bind((self.source, 0))
            sock.settimeout(5)
            sock.connect(self.target)
            sock.sendall(REQUEST_LINE)
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.answers["refused"] += 1
            self._reopen.append(time.monotonic() + self.every)
            return
        self.opened += 1
        # Spread the lines over the interval, as many independent clients would.
        spread = random.uniform(0, self.every) if first else self.every
        self._next[sock] = time.monotonic() + spread
        self._selector.register(sock, selectors.EVENT_READ)

    def _turn(self) -> None:
        for key, _ in self._selector.select(timeout=0.05):
            self._answered(key.fileobj)  # type: ignore[arg-type]
        now = time.monotonic()
        for sock, due in list(self._next.items()):
            if due <= now:
                self._trickle(sock, now)
        due_now = [t for t in self._reopen if t <= now]
        self._reopen = [t for t in self._reopen if t > now]
        for _ in due_now:
            self._open()

    def _trickle(self, sock: socket.socket, now: float) -> None:
        try:
            sock.send(b"X-Slow-%d: 1\r\n" % random.randrange(10**6))
            self._next[sock] = now + self.every
        except OSError:
            self.answers["reset"] += 1
            self._close(sock)

    def _answered(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
            self.answers[data.split(b" ", 2)[1].decode() if data else "closed"] += 1
        except (OSError, IndexError):
            self.answers["reset"] += 1
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        if self._next.pop(sock, None) is not None:
            self._selector.unregister(sock)
            if not self._stop_event.is_set():
                self._reopen.append(time.monotonic() + self.every)
        sock.close()
