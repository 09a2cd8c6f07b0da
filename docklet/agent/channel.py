"""The agent's channel: one connection it keeps open so the CP can reach it at once,
and up which it writes its log batches; and the poster that sends them.

Agents accept no connections, and only some hold a long-poll: so each agent
also holds `GET /api/agents/{id}/channel` open, asking `Upgrade:
docklet-channel/1`. After the CP's 101 the connection carries one JSON object
a line both ways: down, a frame when the CP needs this node now (`logs`: start
relaying a log stream, `logs_stop`, `keepalive`); up, the relay's batches
(`send`), which cost the CP no request. A CP older than that answers 200 and
an endless chunked event stream (Server-Sent-Events lines) instead, and the
batches go by POST. The CP keeps it alive with a frame every 20 s; a read that waits
AGENT_CHANNEL_TIMEOUT for anything, a channel that ends or fails, or one the
CP refuses, is opened again after a jittered backoff (a refused token
registers the agent again, as the heartbeat does). Frames are handed to the
relay on this thread; nothing here waits on Docker or posts to the CP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from docklet.agent.backoff import Backoff
from docklet.agent.relay import WRITTEN
from docklet.common import defaults
from docklet.common.errors import APIError, CPUnreachable
from docklet.wire.client import Client
from docklet.wire.protocol import (
    CHANNEL_FRAME,
    CHANNEL_UPGRADE,
    LogBatch,
    LogRequest,
    LogStop,
    problems,
)

log = logging.getLogger(__name__)

MAX_LINE = 1024 * 1024  # one line of a frame: a log request naming many containers fits
MAX_FRAME = 4 * 1024 * 1024
KEEPALIVE = '{"type": "keepalive"'  # how an upgraded channel's keepalive line starts
# What a CP older than the relay answers (its 404 for an unknown route): asked again rarely.
NO_ROUTE = "no such endpoint"
NO_CHANNEL_WAIT = 300.0

Dispatch = Callable[[LogRequest | LogStop], None]
# Handles the CP refusing this node's token (registers again); True when it did.
Refused = Callable[[APIError, int], bool]


class Channel:
    """Keeps this agent's channel open and hands each frame to `dispatch`."""

    def __init__(
        self,
        cp: Client,
        node: Callable[[], tuple[str, int]],
        dispatch: Dispatch,
        refused: Refused,
        stop: threading.Event,
        *,
        retry_max: float = defaults.RETRY_MAX,
        read_timeout: float = defaults.AGENT_CHANNEL_TIMEOUT,
    ) -> None:
        self.cp, self.node, self.dispatch, self.refused = cp, node, dispatch, refused
        self.stop = stop
        self.read_timeout = read_timeout
        self.backoff = Backoff(retry_max)
        self.open = threading.Event()  # set while a channel is open (tests and benchmarks)
        self._conn: http.client.HTTPConnection | None = None
        self._write_lock = threading.Lock()  # one batch at a time up the socket
        self._up: socket.socket | None = None  # the upgraded channel's socket, while open

    def loop(self, max_iterations: int | None = None) -> None:
        """Open the channel again and again until `stop`."""
        done = 0
        while not self.stop.is_set() and (max_iterations is None or done < max_iterations):
            done += 1
            node_id, generation = self.node()
            opened = time.monotonic()
            try:
                self.once(node_id)
                if time.monotonic() - opened > 1.0:
                    continue  # it ended cleanly (the CP replaced or closed it): at once again
            except APIError as exc:
                if exc.status == 404 and exc.message.startswith(NO_ROUTE):
                    log.info(
                        "channel: the control plane has none; log requests come with heartbeats"
                    )
                    self.stop.wait(NO_CHANNEL_WAIT)
                    continue
                if self.refused(exc, generation):
                    continue
                log.warning(
                    "channel refused: %s; again in %.1fs", exc.message, self.backoff.current
                )
            except CPUnreachable as exc:
                log.warning("channel: %s; again in %.1fs", exc.message, self.backoff.current)
            except Exception:  # never let one bad answer end the agent
                log.exception("channel: unexpected error; again in %.1fs", self.backoff.current)
            self.backoff.wait(self.stop)

    def once(self, node_id: str) -> None:
        """Open the channel and dispatch its frames until it ends; raises if it fails."""
        conn = self._connect()
        self._conn = conn
        try:
            response = self._request(conn, node_id)
            upgraded = response.status == 101
            self.open.set()
            self.backoff.reset()
            log.info("node %s: channel open%s", node_id, " (upgraded)" if upgraded else "")
            if upgraded:
                self._up = conn.sock
                for data in lines(response.fp):
                    self._dispatch(data)
            else:
                for data in frames(response):
                    self._dispatch(data)
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as exc:
            # What http.client raises when the socket closes under a read: the agent stopping
            # (close()), or the CP or the network going away.
            if not self.stop.is_set():
                raise CPUnreachable(f"channel to {self.cp.base_url} lost: {exc!r}") from None
        finally:
            with self._write_lock:
                self._up = None
            self.open.clear()
            self._conn = None
            conn.close()

    def send(self, stream: str, batch: LogBatch) -> bool:
        """Write a batch up the upgraded channel; False when there is none (the caller POSTs).
        A write that fails closes the channel (a half-written line would corrupt it)."""
        data = json.dumps({"type": "batch", "stream": stream, **batch.model_dump()}).encode()
        with self._write_lock:
            sock = self._up
            if sock is None:
                return False
            try:
                sock.sendall(data + b"\n")
                return True
            except OSError as exc:
                log.info("channel: a batch could not be written (%s); reconnecting", exc)
                self._up = None
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return False

    def close(self) -> None:
        """End an open channel now (the agent is stopping): its blocked read returns."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _connect(self) -> http.client.HTTPConnection:
        return _connection(self.cp.base_url, self.read_timeout)

    def _request(self, conn: http.client.HTTPConnection, node_id: str) -> Any:
        base = urlsplit(self.cp.base_url).path.rstrip("/")
        headers = {
            "Accept": "text/event-stream",
            "Connection": "Upgrade",
            "Upgrade": CHANNEL_UPGRADE,
            **self.cp.headers,
        }
        if self.cp.token:
            headers["Authorization"] = f"Bearer {self.cp.token}"
        try:
            conn.request("GET", f"{base}/api/agents/{node_id}/channel", headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise CPUnreachable(
                f"cannot reach the control plane at {self.cp.base_url}: {exc}"
            ) from None
        if response.status not in (101, 200):  # 200: a CP older than the upgrade
            raise refusal(response)
        return response

    def _dispatch(self, data: str) -> None:
        if data.startswith(KEEPALIVE):
            return
        try:
            frame = CHANNEL_FRAME.validate_json(data)
        except ValidationError as exc:
            # A newer CP may send frames this agent does not know: skip them, keep the channel.
            log.warning("channel: a frame this agent cannot use: %s", problems(exc))
            return
        self.dispatch(frame)


def frames(response: Any) -> Iterator[str]:
    """The `data:` of each Server-Sent-Events frame; comments (keepalives) are skipped.

    Ends when the answer ends; a line or frame beyond its bound ends it with an error.
    """
    data: list[str] = []
    size = 0
    while True:
        raw = response.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE or size > MAX_FRAME:
            raise http.client.HTTPException("a channel frame beyond its bound")
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
            data, size = [], 0
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            size += len(line)


def lines(fp: Any) -> Iterator[str]:
    """Each line of an upgraded channel (a JSON object); ends when the CP closes it, and
    with an error at a line beyond its bound."""
    while True:
        raw = fp.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE:
            raise http.client.HTTPException("a channel frame beyond its bound")
        line = raw.decode(errors="replace").strip()
        if line:
            yield line


def refusal(response: Any) -> APIError:
    """A non-200 answer to the channel request as the APIError the other loops would see."""
    return _error(response.status, response.reason, response.read(64 * 1024))


def _error(status: int, reason: str, body: bytes) -> APIError:
    try:
        error = json.loads(body)["error"]
        return APIError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return APIError(status, "http_error", f"HTTP {status} {reason}")


class Poster:
    """Sends a stream's batches to the CP: up the channel when it is upgraded and open
    (no request at all), else a POST, each on a new connection.

    Kept-alive connections for POSTs were measured once and left out: at 1,000 agents
    with 20 busy streams, heartbeat p99 went from 234 ms to 15.8 s and 503s came back
    (docs/architecture.md, "A thousand agents on two cores").
    """

    def __init__(self, cp: Client, node: Callable[[], str]) -> None:
        self.cp, self.node = cp, node
        self.channel: Channel | None = None  # set once the agent's channel exists

    def __call__(self, stream: str, batch: LogBatch) -> Any:
        if self.channel is not None and self.channel.send(stream, batch):
            return WRITTEN
        return self.cp.post(f"/api/agents/{self.node()}/logs/{stream}", batch.model_dump())


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname or "", parts.port, timeout=timeout)
