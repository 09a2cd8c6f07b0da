"""The event log: what happened, for the API, the CLI and the CP's own log.

The only module that writes the `events` table. Each event is also a CP log
line with its subject, so the log and `GET /api/events` tell the same story.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from docklet.common.status import EventKind
from docklet.cp.store.db import Store

log = logging.getLogger("docklet.events")

MAX_MESSAGE = 2000  # an event quotes errors from Docker and from specs: keep it a line


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
