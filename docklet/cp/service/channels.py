"""Agent channels: how a log request reaches any agent at once, and its lines come back,
at no thread's cost.

Agents accept no connections, and only a few hold a long-poll (each waiting poll
holds a server thread). So every agent also holds one GET /api/agents/{id}/channel
open, asking `Upgrade: docklet-channel/1`: the server answers 101 on a worker thread,
then detaches the socket from cheroot (server.py) and hands it here. From then on it
carries one JSON object a line both ways: the CP "rings" a node with a frame (`logs`,
`logs_stop`, a keepalive every CHANNEL_KEEPALIVE), and the agent writes its log batches
up it. One selector thread holds every channel's socket: it reads what is there without
waiting, into a buffer per channel, and hands each whole line to `receive`
(LogStreams.take), so a batch costs a `recv` and a parse, not a request. A line over
`max_line` (--max-body), or more than CHANNEL_READ_BYTES / CHANNEL_READ_FRAMES in a
second, closes that channel (it floods); the others never wait for it.

An older agent asks without Upgrade and gets the chunked `text/event-stream` answer it
knows (a frame is an HTTP chunk); it POSTs its batches, and what it sends on the channel
is ignored. Writes never block: a socket whose send buffer is full, or that fails, is
closed and forgotten (its agent reconnects). A node without a channel gets its log
requests from its next heartbeat's answer (`hold`, `held`): the slow fallback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from docklet.common import defaults
from docklet.common.errors import TooManyChannels

log = logging.getLogger(__name__)

TICK = 1.0  # seconds the selector waits at most between looks at the keepalive clock
HELD_PER_NODE = 100  # log requests kept for a node's next heartbeat (its answer's bound)
HELD_FOR = 60.0  # seconds a held request is kept: a node silent longer is asked again
END = b"0\r\n\r\n"  # the chunked answer's last chunk: a channel closed cleanly


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of HTTP/1.1's chunked transfer coding."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def frame(message: dict[str, Any]) -> bytes:
    """A message to an agent as one event-stream frame, in its chunk."""
    return chunk(f"data: {json.dumps(message, allow_nan=False)}\n\n".encode())


KEEPALIVE = chunk(b": keepalive\n\n")
LINE_KEEPALIVE = b'{"type": "keepalive"}\n'
READ_SIZE = 64 * 1024  # bytes read from one channel a turn: a busy one never starves others


def line(message: dict[str, Any]) -> bytes:
    """A message on an upgraded channel: one JSON object, one line."""
    return json.dumps(message, allow_nan=False).encode() + b"\n"


# What an upgraded channel does with an agent's frame: (node, frame) → the answer to write
# back on it, if any (LogStreams.take: a `logs_stop` for a closed stream).
Receive = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class Link:
    """An upgraded channel's reading side: the bytes of a line not yet whole, and what the
    node has sent in the current second (a node sending more is cut off)."""

    upgraded: bool
    buffer: bytearray = field(default_factory=bytearray)
    second: float = 0.0
    bytes: int = 0
    frames: int = 0


class Channels:
    """Each node's open channel (node_id → socket), held by one selector thread."""

    def __init__(
        self, limit: int = defaults.AGENT_CHANNELS, max_line: int = defaults.MAX_BODY
    ) -> None:
        self.limit = limit
        self.keepalive = defaults.CHANNEL_KEEPALIVE
        self.max_line = max_line  # an agent's frame, at most: the API's --max-body
        self.rate_bytes = defaults.CHANNEL_READ_BYTES  # a node sending more a second: cut off
        self.rate_frames = defaults.CHANNEL_READ_FRAMES
        self.receive: Receive | None = None  # who takes agents' frames (LogStreams)
        self._lock = threading.Lock()  # the maps, and every write to a channel's socket
        self._socks: dict[str, socket.socket] = {}
        self._links: dict[str, Link] = {}  # node → how its channel is framed, what it sent
        self._nodes: dict[int, str] = {}  # a channel's fd → its node
        self._incoming: list[tuple[str, socket.socket, Link]] = []
        self._held: dict[str, deque[tuple[float, str, dict[str, Any]]]] = {}
        self._selector: selectors.BaseSelector | None = None
        # The selector thread's bell (a socket pair), made with the thread: a CP that never
        # holds a channel (the tests', mostly) holds no descriptor for it.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- what the API's handlers call ----------------------------------------------------

    def admit(self, node_id: str) -> None:
        """Raise TooManyChannels unless `node_id` may open a channel now (it replaces its own)."""
        with self._lock:
            count = len(self._socks) + len(self._incoming)
            if node_id not in self._socks and count >= self.limit:
                raise TooManyChannels(
                    f"this control plane holds {self.limit} agent channels (--agent-channels);"
                    f" node {node_id} gets its log requests with its heartbeats meanwhile",
                    retry_after=int(self.keepalive),
                )

    def adopt(
        self, node_id: str, sock: socket.socket, upgraded: bool = False, pending: bytes = b""
    ) -> None:
        """The node's channel from now on (a detached, non-blocking socket); an older one of
        the node is closed. Its held requests are written on it at once. `upgraded`: it
        carries JSON lines both ways (101), `pending` the agent's first bytes already read;
        else it is the chunked event stream of an older agent, which sends nothing."""
        with self._lock:
            if self._stopping:
                _close(sock)
                return
            self._incoming.append((node_id, sock, Link(upgraded, bytearray(pending))))
            self._start()
        self._wake()

    def ring(self, node_id: str, message: dict[str, Any]) -> bool:
        """Write `message` on the node's channel; False when it has none (or it just failed)."""
        with self._lock:
            sock = self._socks.get(node_id)
            if sock is None:
                return False
            if self._send(sock, self._framed(node_id, message)):
                return True
            self._forget(node_id)
        return False

    def hold(self, node_id: str, stream: str, message: dict[str, Any]) -> None:
        """Keep `message` for the node's next heartbeat answer (it has no channel)."""
        with self._lock:
            held = self._held.setdefault(node_id, deque(maxlen=HELD_PER_NODE))
            held.append((time.monotonic(), stream, message))

    def held(self, node_id: str) -> list[dict[str, Any]]:
        """The requests held for the node, given once (its heartbeat answer carries them)."""
        if node_id not in self._held:  # nearly always: no lock taken on a heartbeat's way
            return []
        with self._lock:
            held = self._held.pop(node_id, None)
        now = time.monotonic()
        return [m for at, _, m in held or () if now - at < HELD_FOR]

    def drop_held(self, stream: str) -> None:
        """A stream closed: its requests held for heartbeats are no longer wanted."""
        with self._lock:
            for node_id, held in list(self._held.items()):
                kept = deque((h for h in held if h[1] != stream), maxlen=HELD_PER_NODE)
                if kept:
                    self._held[node_id] = kept
                else:
                    del self._held[node_id]

    def open_now(self) -> int:
        with self._lock:
            return len(self._socks)

    def has(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._socks

    def stop(self) -> None:
        """Close every channel (cleanly: agents reconnect) and end the selector thread."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            for node_id in list(self._socks):
                self._forget(node_id, clean=True)
            for _, sock, _ in self._incoming:
                _close(sock)
            self._incoming.clear()
            for end in (self._wake_r, self._wake_w):
                if end is not None:
                    end.close()
            if self._selector is not None:
                self._selector.close()

    # -- the selector thread ---------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:  # under the lock
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._thread = threading.Thread(target=self.run, daemon=True, name="channels")
            self._thread.start()

    def run(self, max_iterations: int | None = None) -> None:
        """Watch every channel until `stop()`: EOF or an error forgets it; keepalives."""
        selector = self._selector
        assert selector is not None
        last_keepalive = time.monotonic()
        turns = 0
        while not self._stopping and (max_iterations is None or turns < max_iterations):
            turns += 1
            read = more = False
            for key, _ in selector.select(TICK):
                if key.fileobj is self._wake_r:
                    self._drain_wake()
                else:
                    read = True
                    more |= self._readable(key.fileobj)  # type: ignore[arg-type]
            began = time.monotonic()
            self._take_incoming(selector)
            if began - last_keepalive >= self.keepalive:
                last_keepalive = began
                self._keepalives()
            if read and not more:
                # Batches that come meanwhile wait in their sockets for the next turn, which
                # takes them all: one select and one turn at the GIL for many, not one each.
                time.sleep(max(0.0, began + defaults.CHANNEL_TURN - time.monotonic()))

    def _take_incoming(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            for node_id, sock, link in incoming:
                if node_id in self._socks:
                    log.info("node %s: a new channel replaces its older one", node_id)
                    self._forget(node_id, clean=True)
                self._socks[node_id] = sock
                self._links[node_id] = link
                self._nodes[sock.fileno()] = node_id
                selector.register(sock, selectors.EVENT_READ)
        for node_id, sock, link in incoming:  # requests held while it had no channel: now
            for message in self.held(node_id):
                self.ring(node_id, message)
            if link.buffer:
                self._lines(node_id, sock, link)

    def _readable(self, sock: socket.socket) -> bool:
        """An upgraded channel's frames (batches) are read and handed on; an older agent
        says nothing on its channel, so what it sends is ignored. EOF: the agent left.
        True when it read all it may at once (READ_SIZE): more may be waiting now."""
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        with self._lock:
            node_id = self._nodes.get(sock.fileno())
            if node_id is None or self._socks.get(node_id) is not sock:
                return False
            if not data:
                self._forget(node_id)
                return False
            link = self._links[node_id]
        if link.upgraded:
            _counted(link, len(data))
            link.buffer += data
            self._lines(node_id, sock, link)
        return len(data) == READ_SIZE

    def _lines(self, node_id: str, sock: socket.socket, link: Link) -> None:
        """Take each whole line of the channel's buffer; cut the node off when it sends a
        line beyond --max-body or more than its share a second (it floods)."""
        why = _over(link, self.rate_bytes, self.rate_frames)
        while why is None:
            end = link.buffer.find(b"\n")
            if end > self.max_line or (end < 0 and len(link.buffer) > self.max_line):
                why = f"a frame over {self.max_line} bytes (the CP's --max-body)"
                break
            if end < 0:
                return
            raw = bytes(link.buffer[:end])
            del link.buffer[: end + 1]
            link.frames += 1
            self._frame(node_id, raw)
            why = _over(link, self.rate_bytes, self.rate_frames)
        log.warning("node %s: channel closed: %s", node_id, why)
        with self._lock:
            if self._socks.get(node_id) is sock:
                self._forget(node_id)

    def _frame(self, node_id: str, raw: bytes) -> None:
        """One frame from an agent, to `receive`; its answer (if any) goes back at once."""
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            log.info("node %s: channel: a frame that is not a JSON object, skipped", node_id)
            return
        answer = self.receive(node_id, message) if self.receive is not None else None
        if answer is not None:
            self.ring(node_id, answer)

    def _keepalives(self) -> None:
        """A keepalive on every channel, the lock taken for each: a thousand sends under
        it at once kept every heartbeat (`held`) and every `ring` waiting."""
        with self._lock:
            socks = list(self._socks.items())
        for node_id, sock in socks:
            with self._lock:
                if self._socks.get(node_id) is not sock:
                    continue  # gone or replaced meanwhile
                upgraded = self._links[node_id].upgraded
                if not self._send(sock, LINE_KEEPALIVE if upgraded else KEEPALIVE):
                    self._forget(node_id)

    def _framed(self, node_id: str, message: dict[str, Any]) -> bytes:
        """The message as the node's channel frames it (under the lock)."""
        return line(message) if self._links[node_id].upgraded else frame(message)

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        """Write all of `data` now, or fail: a frame is never left half written (under the lock)."""
        try:
            sent = sock.send(data)
        except OSError:  # BlockingIOError too: its send buffer is full, it does not read
            return False
        return sent == len(data)

    def _forget(self, node_id: str, clean: bool = False) -> None:
        """Close the node's channel (under the lock); `clean`: end its answer first."""
        sock = self._socks.pop(node_id, None)
        link = self._links.pop(node_id, None)
        if sock is None:
            return
        self._nodes.pop(sock.fileno(), None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        if clean and link is not None and not link.upgraded:
            self._send(sock, END)
        _close(sock)

    def _wake(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # full (it wakes anyway), or none
            self._wake_w.send(b"\0")  # type: ignore[union-attr]

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):  # type: ignore[union-attr]
                pass
        except OSError:
            pass


def _counted(link: Link, size: int) -> None:
    """`size` more bytes read from the node this second (a new second starts afresh)."""
    now = time.monotonic()
    if now - link.second >= 1.0:
        link.second, link.bytes, link.frames = now, 0, 0
    link.bytes += size


def _over(link: Link, rate_bytes: int, rate_frames: int) -> str | None:
    """Why the node must be cut off for what it sent this second, if it must."""
    if link.bytes > rate_bytes:
        return f"over {rate_bytes} bytes a second: it floods"
    if link.frames > rate_frames:
        return f"over {rate_frames} frames a second: it floods"
    return None


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
