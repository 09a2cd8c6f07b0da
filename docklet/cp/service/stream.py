"""Event streams: `GET /api/events` as Server-Sent Events, for scripts that follow rollouts.

An open stream holds a server thread, so it is bounded every way: at most
`event_stream_slots` are open at once (taken from the long-polls' threads,
never from the reserve heartbeats and the rest of the API are served by; one
more is a 503), each ends after `event_stream_time` (the client reconnects
with `Last-Event-ID`), and each says a comment line every `keepalive` seconds
when there is nothing to say: proxies keep it open, and a client that left is
noticed when the write fails (the server's socket timeout bounds a stalled one).

New events are found cheaply: a stream sleeps on the event log's bell
(store/events.py rings it once a transaction that recorded events commits)
and reads the events after the last id it sent, by primary key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from docklet.common import defaults
from docklet.common.errors import BadRequest, TooManyStreams
from docklet.common.units import parse_duration
from docklet.cp.settings import CPConfig
from docklet.cp.store import events
from docklet.cp.store.db import Store

BATCH = 200  # events one read of the table sends at most
POLL = 1.0  # how often a stream looks unwoken (events written by another process)
MAX_ID = 2**63 - 1  # SQLite's largest integer key
RETRY_AFTER = 5  # seconds a client refused a stream waits before asking again
RECONNECT_MS = 1000  # the `retry:` an EventSource waits before it reconnects


class EventStreams:
    """The open event streams and their slots; `open` one, iterate it, and it ends."""

    def __init__(self, store: Store, config: CPConfig) -> None:
        self.store = store
        self.config = config
        self.keepalive = defaults.EVENT_STREAM_KEEPALIVE
        self._lock = threading.Lock()
        self._open = 0
        store.observers.append(events.bell.after_commit)  # wakes streams once events commit

    def open_now(self) -> int:
        with self._lock:
            return self._open

    def start_after(self, last_event_id: str, since: str) -> int:
        """The id a stream or a page starts after: `Last-Event-ID`, else `since` (an event
        id, or a duration back from now), else the newest event (from now on)."""
        if last_event_id:
            return _event_id(last_event_id, "Last-Event-ID")
        if not since:
            return events.newest_id(self.store)
        if since.isascii() and since.isdigit():
            return _event_id(since, "since")
        try:
            back = parse_duration(since)
        except ValueError:
            raise BadRequest(
                f"query parameter 'since' is an event id (e.g. 1234) or a duration back from"
                f" now (e.g. 10m, 1h30m), not {since[:40]!r}"
            ) from None
        return events.last_before(self.store, time.time() - back)

    def page(self, app: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """The events after id `after`, oldest first: page on with the last one's id."""
        return events.after(self.store, after, app, limit)

    def open(self, app: str | None, after: int) -> Stream:
        """A stream of the events after id `after`, or TooManyStreams when every slot is taken.

        The slot is taken now, and given back when the stream ends or is closed.
        """
        slots = self.config.event_stream_slots
        with self._lock:
            if self._open >= slots:
                raise TooManyStreams(
                    f"all {slots} event streams this control plane serves are open; retry in"
                    f" {RETRY_AFTER}s, or list events without a stream (GET /api/events)",
                    retry_after=RETRY_AFTER,
                )
            self._open += 1
        ends = time.monotonic() + self.config.event_stream_time
        return Stream(self._frames(app, after, ends), self._release)

    def _release(self) -> None:
        with self._lock:
            self._open -= 1

    def _frames(self, app: str | None, after: int, ends: float) -> Generator[bytes, None, None]:
        yield f"retry: {RECONNECT_MS}\n: events after {after}\n\n".encode()
        last = after
        while time.monotonic() < ends:
            found = self._next(app, last, min(ends, time.monotonic() + self.keepalive))
            if found:
                last = found[-1]["id"]
                yield b"".join(_frame(e) for e in found)
            elif time.monotonic() < ends:
                yield b": keepalive\n\n"
        yield b": the stream ends here; reconnect with Last-Event-ID\n\n"

    def _next(self, app: str | None, last: int, until: float) -> list[dict[str, Any]]:
        """The events after `last`, as soon as there are some; [] at `until`."""
        while True:
            rung = events.bell.rung
            found = events.after(self.store, last, app, BATCH)
            left = until - time.monotonic()
            if found or left <= 0:
                return found
            events.bell.wait(rung, min(left, POLL))  # rung after a commit: read at once


class Stream:
    """An open stream's frames; closing it (the server does, when the answer is over or the
    client left) gives its slot back, once, even if it was never iterated."""

    def __init__(self, frames: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._frames = frames
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        self._frames.close()
        release, self._release = self._release, None
        if release is not None:
            release()


def _event_id(text: str, name: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) < 20 and int(text) <= MAX_ID):
        raise BadRequest(f"{name} is an event id (a whole number, e.g. 1234), not {text[:40]!r}")
    return int(text)


def _frame(event: dict[str, Any]) -> bytes:
    """One event as a Server-Sent Event: its id (what Last-Event-ID resumes from), its JSON."""
    return f"id: {event['id']}\ndata: {json.dumps(event, allow_nan=False)}\n\n".encode()
