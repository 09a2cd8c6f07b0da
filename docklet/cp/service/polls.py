"""Agents' long-polls: who waits for tasks, and the slots a wait may take.

A waiting poll holds a server thread, so at most `long_poll_slots` wait at
once: a poll that finds none free answers at once with what is already
there, and its agent leaves long-polling to others for a while, learning of
new tasks from its heartbeats instead. A node has one waiting poll at most:
its next poll makes the older one answer at once, empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

POLL_SLICE = 5.0  # a waiting long-poll re-checks at least this often

Lease = Callable[[], list[dict[str, Any]]]  # the node's tasks, leased now (empty: none wait)


class _Poll:
    """One waiting long-poll: woken when work is queued, or replaced by its node's next poll."""

    __slots__ = ("event", "replaced")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.replaced = False

    def replace(self) -> None:
        """It answers now, empty, and gives its slot back."""
        self.replaced = True
        self.event.set()


class Polls:
    """The waiting long-polls, one per node at most, and the slots they may take."""

    def __init__(self, slots: int) -> None:
        self._polls: dict[str, _Poll] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(slots)

    def limit(self, slots: int) -> None:
        """Size the slots to the server that serves this CP (before it serves): the rest
        of the API must always find a thread."""
        self._slots = threading.BoundedSemaphore(max(1, slots))

    def waiting(self) -> int:
        with self._lock:
            return len(self._polls)

    def wake(self) -> None:
        """Tasks were queued: every waiting long-poll looks for its own."""
        with self._lock:
            waiting = list(self._polls.values())
        for poll in waiting:
            poll.event.set()

    def wait(self, node_id: str, wait: float, lease: Lease) -> tuple[list[dict[str, Any]], bool]:
        """What `lease` finds within `wait` seconds; and whether this poll found no slot
        (then it answered at once)."""
        with self._lock:
            older = self._polls.pop(node_id, None)
        if older is not None:
            older.replace()
        if not self._slots.acquire(timeout=1.0 if older else 0):
            return lease(), True
        poll = _Poll()
        try:
            with self._lock:
                displaced = self._polls.get(node_id)
                self._polls[node_id] = poll
            if displaced is not None:  # a poll from the same node that raced this one
                displaced.replace()
            return self._until(poll, time.monotonic() + wait, lease), False
        finally:
            with self._lock:
                if self._polls.get(node_id) is poll:
                    del self._polls[node_id]
            self._slots.release()

    @staticmethod
    def _until(poll: _Poll, deadline: float, lease: Lease) -> list[dict[str, Any]]:
        while True:
            poll.event.clear()  # before leasing: work queued from here on wakes it
            leased = lease()
            remaining = deadline - time.monotonic()
            if leased or remaining <= 0:
                return leased
            poll.event.wait(min(remaining, POLL_SLICE))
            if poll.replaced:
                return []
