"""The agent's half of the log relay: follow containers' logs and post the lines to the CP.

A log request (from the channel, or a heartbeat's answer) names a stream and
the containers on this node it shows. For each stream: one thread per
container reads `docker logs` (on the engine's own log connection, never the
task pool's), lines go into one bounded buffer (the oldest dropped and counted
when the CP does not take them fast enough), and one sender posts them as
batches: as soon as lines wait but at most every LOG_BATCH_EVERY, and an empty
batch every LOG_IDLE_BATCH so a caller that left is noticed by the CP's 410
even when the channel's `logs_stop` was lost. A stream ends on `logs_stop`, on
a refusal (410), when every container's lines ended, or after its time limit.
None of this touches the heartbeat or the task threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from docklet.agent.engine import Engine, LogLines
from docklet.common import defaults
from docklet.common.errors import APIError, CPUnreachable, DockletError
from docklet.wire.protocol import (
    LogBatch,
    LogContainer,
    LogEnd,
    LogEnded,
    LogLine,
    LogRequest,
    LogStop,
)

log = logging.getLogger(__name__)

Post = Callable[[str, LogBatch], object]  # raises APIError or CPUnreachable
REMEMBERED = 1024  # ended streams' ids kept, so a late copy of a request is not run again
GONE = frozenset({401, 403, 404, 410})  # the stream (or this node's token) is no more
PATIENCE = 10  # POSTed batches wait at least this many times the CP's answer time apart
WRITTEN = "written up the channel"  # what a Post returns for a batch with no answer to time


@dataclass(frozen=True)
class Limits:
    """An agent's bounds on log streams (docs/architecture.md "The log relay")."""

    streams: int = defaults.AGENT_LOG_STREAMS
    containers: int = defaults.AGENT_LOG_CONTAINERS
    lines: int = defaults.AGENT_LOG_BUFFER_LINES
    bytes: int = defaults.AGENT_LOG_BUFFER_BYTES
    stream_time: float = defaults.AGENT_LOG_STREAM_TIME
    batch_every: float = defaults.LOG_BATCH_EVERY
    idle_batch: float = defaults.LOG_IDLE_BATCH


class Relay:
    """Every log stream this agent follows, at most `limits.streams` at once."""

    def __init__(self, engine: Engine, post: Post, limits: Limits | None = None) -> None:
        self.engine, self.post = engine, post
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._streams: dict[str, Stream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    def handle(self, frame: LogRequest | LogStop) -> None:
        """Act on one frame from the channel or a heartbeat's answer; a repeat is ignored."""
        if isinstance(frame, LogStop):
            self.stop(frame.stream)
        else:
            self.start(frame)

    def start(self, request: LogRequest) -> None:
        with self._lock:
            if self._closed or request.stream in self._streams or request.stream in self._ended:
                return  # a request seen twice (channel and heartbeat) is followed once
            if len(self._streams) >= self.limits.streams:
                self._remember(request.stream)
                refused = True
            else:
                stream = self._streams[request.stream] = Stream(request, self)
                refused = False
        if refused:
            self._refuse(request)
            return
        log.info(
            "log stream %s: following %d container(s)", request.stream, len(request.containers)
        )
        stream.start()

    def stop(self, stream_id: str) -> None:
        """Stop following a stream now (its caller left)."""
        with self._lock:
            stream = self._streams.get(stream_id)
            self._remember(stream_id)
        if stream is not None:
            stream.stop("stopped by the control plane")

    def close(self) -> None:
        """Stop every stream: the agent is stopping."""
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
        for stream in streams:
            stream.stop("the agent is stopping")

    def active(self) -> list[str]:
        """The ids of the streams followed now."""
        with self._lock:
            return sorted(self._streams)

    def ended(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]
            self._remember(stream.id)

    def _remember(self, stream_id: str) -> None:
        self._ended[stream_id] = None
        self._ended.move_to_end(stream_id)
        while len(self._ended) > REMEMBERED:
            self._ended.popitem(last=False)

    def _refuse(self, request: LogRequest) -> None:
        """Tell the CP this node follows as many streams as it may; off the channel's thread."""
        error = (
            f"this node already follows {self.limits.streams} log streams, its limit"
            " (docklet-agent --log-streams); try again when one ends"
        )
        log.warning("log stream %s: refused: %s", request.stream, error)

        def send() -> None:
            try:
                self.post(request.stream, LogBatch(error=error))
            except DockletError as exc:
                log.info("log stream %s: refusal not delivered: %s", request.stream, exc.message)

        threading.Thread(target=send, daemon=True, name=f"logs-{request.stream}-refused").start()


class Stream:
    """One log stream: its followers, its bounded buffer and its sender."""

    def __init__(self, request: LogRequest, relay: Relay) -> None:
        self.request, self.relay, self.limits = request, relay, relay.limits
        self.id = request.stream
        self._cond = threading.Condition()
        self._lines: deque[tuple[LogLine, int]] = deque()
        self._bytes = 0
        self._dropped = 0
        self._ended: list[LogEnded] = []
        self._readers: dict[str, LogLines] = {}
        self._live = 0  # followers whose lines have not ended
        self._stopped: str | None = None  # why, once stopped
        self._deadline = time.monotonic() + self.limits.stream_time
        self._answer_time = 0.0  # how long the CP takes to take a batch (moving average)

    def start(self) -> None:
        followed = self.request.containers[: self.limits.containers]
        with self._cond:
            self._live = len(followed)
            for container in self.request.containers[self.limits.containers :]:
                reason = f"not followed: a stream follows at most {self.limits.containers} here"
                self._ended.append(LogEnded(label=container.label, reason=reason))
        for container in followed:
            threading.Thread(
                target=self._follow, args=(container,), daemon=True, name=f"logs-{self.id}"
            ).start()
        threading.Thread(target=self._send_loop, daemon=True, name=f"logs-{self.id}-send").start()

    def stop(self, why: str) -> None:
        """End every follower at once (a blocked Docker read included)."""
        with self._cond:
            if self._stopped is not None:
                return
            self._stopped = why
            readers = list(self._readers.values())
            self._cond.notify_all()
        for reader in readers:
            reader.close()
        log.info("log stream %s: stopped (%s)", self.id, why)

    # -- followers ------------------------------------------------------------

    def _follow(self, container: LogContainer) -> None:
        request = self.request
        reason: str = LogEnd.EXITED if request.follow else LogEnd.DONE
        try:
            reader = self.relay.engine.logs(
                container.name,
                tail=request.tail,
                since=request.since,
                follow=request.follow,
                timestamps=request.timestamps,
            )
            if reader is None:
                reason = LogEnd.NOT_FOUND
            elif self._watch(container.label, reader):
                for moment, text in reader:
                    self._add(LogLine.cut(container.label, text, moment))
        except DockletError as exc:
            reason = f"docker: {exc.message}"
        except Exception:  # one container's failure must not end the others'
            log.exception("log stream %s: reading %s", self.id, container.name)
            reason = "the agent could not read its logs (see the agent's log)"
        self._end(container.label, reason)

    def _watch(self, label: str, reader: LogLines) -> bool:
        """Keep the reader to close it when the stream stops; False if it already has."""
        with self._cond:
            if self._stopped is None:
                self._readers[label] = reader
                return True
        reader.close()
        return False

    def _add(self, line: LogLine) -> None:
        cost = len(line.text) + len(line.label) + 40  # about what it adds to a batch
        with self._cond:
            # Only the first line waiting wakes the sender (it may be due at once, after a
            # quiet while); with lines already waiting it sleeps until their batch is due,
            # so a chatty container costs no wake-up a line.
            first = not (self._lines or self._ended or self._dropped)
            self._lines.append((line, cost))
            self._bytes += cost
            while len(self._lines) > self.limits.lines or self._bytes > self.limits.bytes:
                _, dropped = self._lines.popleft()  # the oldest: the caller sees the newest
                self._bytes -= dropped
                self._dropped += 1
            if first:
                self._cond.notify_all()

    def _end(self, label: str, reason: str) -> None:
        with self._cond:
            self._readers.pop(label, None)
            if self._stopped is None and self._live > 0:
                self._live -= 1
                self._ended.append(LogEnded(label=label, reason=reason))
                self._cond.notify_all()

    # -- the sender ---------------------------------------------------------------

    def _send_loop(self) -> None:
        last = 0.0
        why = "every container's lines were sent"
        try:
            while True:
                batch, last_one = self._next_batch(last)
                if batch is None:
                    return
                last = time.monotonic()
                sent = self._send(batch)
                if sent is None:
                    return  # refused: stop() said why
                if last_one and (sent or last > self._deadline):
                    return
                if not sent:
                    last += self.limits.idle_batch  # the CP is busy or away: ask less often
        except Exception:  # a bug here ends this stream, never the agent
            log.exception("log stream %s: sender failed", self.id)
            why = "the agent failed (see its log)"
        finally:
            self.stop(why)
            self.relay.ended(self)

    def _next_batch(self, last: float) -> tuple[LogBatch | None, bool]:
        """The next batch when it is due, and whether it is the stream's last; None: stopped."""
        idle = self.limits.idle_batch
        # A CP slow to answer POSTs gets fewer, fuller batches: waiting for it at most a
        # tenth of the time, so a thousand agents' lines never crowd out their heartbeats.
        every = min(max(self.limits.batch_every, PATIENCE * self._answer_time), idle)
        with self._cond:
            while self._stopped is None:
                now = time.monotonic()
                if now >= self._deadline:
                    self._expire()
                waiting = bool(self._lines or self._ended or self._dropped)
                due = last + (every if waiting else idle)
                if now >= due:
                    return self._take(), self._live == 0 and not self._lines
                self._cond.wait(min(due, self._deadline) - now + 0.001)
            return None, True

    def _expire(self) -> None:
        """The stream's time is up: its open containers end, and the caller asks again."""
        for label, reader in list(self._readers.items()):
            reader.close()
            self._ended.append(LogEnded(label=label, reason=LogEnd.TIME_LIMIT))
        self._readers.clear()
        self._live = 0

    def _take(self) -> LogBatch:
        lines: list[LogLine] = []
        size = 0
        while self._lines and len(lines) < self.limits.lines:
            line, cost = self._lines[0]
            if lines and size + cost > self.limits.bytes:
                break
            self._lines.popleft()
            self._bytes -= cost
            size += cost
            lines.append(line)
        batch = LogBatch(lines=lines, dropped=self._dropped, ended=self._ended[:1000])
        self._dropped, self._ended = 0, self._ended[1000:]
        return batch

    def _send(self, batch: LogBatch) -> bool | None:
        """Post one batch: True when the CP took it, False when it did not (the lines count
        as dropped), None when it says the stream is no more (the stream stops)."""
        started = time.monotonic()
        try:
            answer = self.relay.post(self.id, batch)
            # A batch written up the channel has no answer time: a closed stream says so
            # with a `logs_stop` frame, and only POSTs are paced by the CP's answers.
            took = 0.0 if answer == WRITTEN else time.monotonic() - started
            self._answer_time = 0.7 * self._answer_time + 0.3 * took
        except APIError as exc:
            if exc.status in GONE:
                self.stop(f"the control plane closed it: {exc.message}")
                return None
            self._lost(batch, exc.message)
            return False
        except CPUnreachable as exc:
            self._lost(batch, exc.message)
            return False
        return True

    def _lost(self, batch: LogBatch, why: str) -> None:
        """A batch the CP did not take: its lines count as dropped, its ends are told again."""
        log.info("log stream %s: batch not delivered: %s", self.id, why)
        with self._cond:
            self._dropped += len(batch.lines) + batch.dropped
            self._ended = list(batch.ended) + self._ended
