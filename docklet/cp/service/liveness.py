"""Liveness memory: when each node's agent last spoke, and since when this CP could hear it.

Most heartbeats say only "still here": their time is kept in memory, not
written, and `flush_seen` writes the times in batches (the controller loop
calls it every second). Views and the scheduler read the memory, so a node
shows alive at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from docklet.cp.store import nodes
from docklet.cp.store.db import Store

FLUSH_BATCH = 100  # nodes' heartbeat times written in one transaction
MAX_NODE_ADDRESSES = 10_000  # addresses nodes spoke from, kept at once; the oldest forgotten


class Liveness:
    """Each node's latest word kept in memory, and this CP's own deaf spells."""

    def __init__(self, store: Store, started_at: float) -> None:
        self.store = store
        # Liveness counts only heartbeats this process could have received.
        self.started_at = started_at
        self.overload: Any = None  # the server's Overload middleware, once one serves this CP
        # The server's own word, once one serves this CP: do requests wait too long for a
        # thread right now (every thread taken)?
        self.unheard: Callable[[], bool] | None = None
        self._deaf_at = 0.0  # the latest moment this CP knows it may have missed a node
        # Addresses a node's credential passed from, newest last: a refusal to one of them
        # may have been a heartbeat.
        self._node_addresses: dict[str, None] = {}
        # The latest heartbeat of each node: a heartbeat that changes nothing else
        # writes nothing, and the controller loop writes these in one batch.
        self._seen: dict[str, float] = {}
        self._seen_dirty: dict[str, float] = {}
        self._seen_lock = threading.Lock()

    def deaf_until(self) -> float:
        """Until when this CP could not hear every heartbeat: its start, its latest 503,
        the latest time a request waited too long for a thread (or one waits now), or its
        latest refusal to an address nodes speak from.

        Liveness counts a node's silence only from then: a CP that was down, or
        so busy it turned requests away, must not declare nodes dead and move
        their work (more work, while it is already overloaded).
        """
        refused = self.overload.refused_at if self.overload is not None else 0.0
        now_unheard = time.time() if self.unheard is not None and self.unheard() else 0.0
        return max(self.started_at, refused, self._deaf_at, now_unheard)

    def deaf(self) -> None:
        """This CP may have missed a heartbeat just now (it kept a request waiting too long)."""
        self._deaf_at = time.time()

    def spoke_from(self, address: str) -> None:
        """A node's credential passed from `address`: refusing it may hide a heartbeat."""
        addresses = self._node_addresses
        if address in addresses:  # the usual case, read without the lock
            return
        with self._seen_lock:
            addresses[address] = None
            while len(addresses) > MAX_NODE_ADDRESSES:
                del addresses[next(iter(addresses))]

    def refused(self, address: str) -> None:
        """The CP refused a request from `address` (429, 408): deaf, if nodes speak from there.

        A stranger's refusals hide no heartbeat, so they leave liveness alone: else
        one wrong token a minute would keep a dead node's work from ever moving.
        """
        if address in self._node_addresses:
            self.deaf()

    def heard(self, node_id: str) -> None:
        """The node's agent spoke: kept in memory, written by `flush_seen`."""
        with self._seen_lock:
            self._seen[node_id] = self._seen_dirty[node_id] = time.time()

    def last_seen(self) -> dict[str, float]:
        """Each node's latest heartbeat kept in memory (newer than the stored one, or equal)."""
        with self._seen_lock:
            return dict(self._seen)

    def flush_seen(self) -> int:
        """Write the heartbeats kept in memory since the last flush, FLUSH_BATCH nodes a
        transaction (a thousand nodes' worth at once would hold the writer too long)."""
        with self._seen_lock:
            dirty, self._seen_dirty = self._seen_dirty, {}
        batch = list(dirty.items())
        for start in range(0, len(batch), FLUSH_BATCH):
            chunk = dict(batch[start : start + FLUSH_BATCH])
            try:
                with self.store.write(quiet=True) as db:  # views read these from memory
                    nodes.flush_seen(db, chunk)
            except Exception:  # kept for the next flush, unless a newer beat came meanwhile
                with self._seen_lock:
                    self._seen_dirty = {**dict(batch[start:]), **self._seen_dirty}
                raise
        return len(dirty)
