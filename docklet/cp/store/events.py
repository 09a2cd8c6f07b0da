"""The event log: what happened, for the API, the CLI and the CP's own log.

The only module that writes the `events` table. Each event is also a CP log
line with its subject, so the log and `GET /api/events` tell the same story.
Each event also rings `bell` once its transaction commits, which wakes the open event streams
(service/stream.py): they read the table, here, instead of polling it blind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any

from docklet.common.status import EventKind
from docklet.cp.store.db import Store

log = logging.getLogger("docklet.events")

MAX_MESSAGE = 2000  # an event quotes errors from Docker and from specs: keep it a line


class Bell:
    """Rung once a write transaction that recorded events has committed; a stream
    waits on it for the next ring, and what it then reads is there to read.

    `record` notes the event on the writing thread; `after_commit`, a store write
    observer, rings for it once the transaction is committed (one ring for a burst
    of events, none for a rolled-back one until that thread commits again).
    One per process: a test's several CPs only wake each other's streams for nothing.
    """

    def __init__(self) -> None:
        self.rung = 0  # rings so far: a waiter compares, so no ring is missed
        self._cond = threading.Condition()
        self._written = threading.local()  # the writing thread's transaction has events

    def note(self) -> None:
        self._written.pending = True

    def after_commit(self, _site: str = "", _took: float = 0.0) -> None:
        if getattr(self._written, "pending", False):
            self._written.pending = False
            self.ring()

    def ring(self) -> None:
        with self._cond:
            self.rung += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until it rang after `seen` rings, at most `timeout` seconds; whether it did."""
        with self._cond:
            return self._cond.wait_for(lambda: self.rung != seen, timeout)


bell = Bell()


def record(
    db: sqlite3.Connection,
    kind: EventKind,
    message: str,
    *,
    app: str | None = None,
    node_id: str | None = None,
    task_id: int | None = None,
) -> None:
    """Append to the event log and say it in the CP's log too."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    db.execute(
        "INSERT INTO events (at, kind, app, node_id, task_id, message) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), kind, app, node_id, task_id, message),
    )
    # Its subject, as the log line's context fields too (--log-format json).
    log.info("%s: %s", kind, message, extra={"app": app, "node": node_id, "task": task_id})
    bell.note()


PRUNE_BATCH = 500  # events one prune deletes at most (each pass): a transaction stays short


def prune(db: sqlite3.Connection, keep: int) -> int:
    """The event log is recent history: keep the newest `keep`; returns how many went."""
    return db.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events"
        " WHERE id <= (SELECT MAX(id) FROM events) - ? ORDER BY id LIMIT ?)",
        (keep, PRUNE_BATCH),
    ).rowcount


def recent(store: Store, app: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    where, params = ("WHERE app = ?", (app,)) if app else ("", ())
    rows = store.query(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", (*params, limit))
    return rows[::-1]


def after(store: Store, last_id: int, app: str | None, limit: int) -> list[dict[str, Any]]:
    """The events after id `last_id` (of `app`, if given), oldest first, at most `limit`."""
    where, params = ("AND app = ?", (app,)) if app else ("", ())
    return store.query(
        f"SELECT * FROM events WHERE id > ? {where} ORDER BY id LIMIT ?",
        (last_id, *params, limit),
    )


def newest_id(store: Store) -> int:
    """The id of the newest event (0: none yet): a stream that starts now starts after it."""
    row = store.one("SELECT COALESCE(MAX(id), 0) AS id FROM events")
    return int(row["id"]) if row else 0


def last_before(store: Store, at: float) -> int:
    """The id of the newest event recorded before time `at` (0: none): events since `at`
    come after it. Read from the newest back, so a recent `at` reads few rows."""
    row = store.one("SELECT id FROM events WHERE at < ? ORDER BY id DESC LIMIT 1", (at,))
    return int(row["id"]) if row else 0
