"""Apps: one row per app the repository names, with what it should be and runs.

The only writer of the `apps` table. Sync creates apps and sets what they
should be (desired state, target revision); the reconcile pass sets the
revision they run, their last error, and forgets them once removed everywhere.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from docklet.common.status import DesiredState
from docklet.cp.store.db import among


def names(db: sqlite3.Connection) -> list[str]:
    """Every app's name, in order."""
    return [r[0] for r in db.execute("SELECT name FROM apps ORDER BY name")]


def rows(db: sqlite3.Connection, apps: Sequence[str]) -> list[sqlite3.Row]:
    """The rows of those of `apps` that exist, by name."""
    only, params = among("name", apps)
    return db.execute(f"SELECT * FROM apps WHERE {only} ORDER BY name", params).fetchall()


def get(db: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM apps WHERE name = ?", (name,)).fetchone()


def not_removed(db: sqlite3.Connection) -> list[str]:
    """Apps whose spec file was there at the last sync."""
    rows_ = db.execute("SELECT name FROM apps WHERE desired != ?", (DesiredState.REMOVED,))
    return [r[0] for r in rows_]


def create(db: sqlite3.Connection, name: str, desired: str, now: float) -> None:
    db.execute(
        "INSERT INTO apps (name, desired, created_at, updated_at) VALUES (?, ?, ?, ?)",
        (name, desired, now, now),
    )


def set_desired(db: sqlite3.Connection, name: str, desired: str, now: float) -> None:
    db.execute("UPDATE apps SET desired = ?, updated_at = ? WHERE name = ?", (desired, now, name))


def mark_removed(db: sqlite3.Connection, name: str, now: float) -> bool:
    """The app's file is gone: its containers are to be removed. False if it was already."""
    return bool(
        db.execute(
            "UPDATE apps SET desired = ?, updated_at = ? WHERE name = ? AND desired != ?",
            (DesiredState.REMOVED, now, name, DesiredState.REMOVED),
        ).rowcount
    )


def set_target(db: sqlite3.Connection, name: str, number: int, now: float, *, first: bool) -> None:
    """A new revision is the app's target (and, if it is the app's first, its current one
    at once: there is nothing to protect); the last error is the old revision's."""
    db.execute(
        "UPDATE apps SET target_revision = ?, last_error = NULL, updated_at = ?,"
        " current_revision = CASE WHEN ? THEN ? ELSE current_revision END WHERE name = ?",
        (number, now, first, number, name),
    )


def set_current(db: sqlite3.Connection, name: str, number: int) -> None:
    db.execute("UPDATE apps SET current_revision = ? WHERE name = ?", (number, name))


def set_error(db: sqlite3.Connection, name: str, message: str | None) -> None:
    db.execute("UPDATE apps SET last_error = ? WHERE name = ?", (message, name))


def touch(db: sqlite3.Connection, name: str, now: float) -> None:
    """A change to the app as a stop and start is: a deploy Docker refused is tried again."""
    db.execute("UPDATE apps SET updated_at = ? WHERE name = ?", (now, name))


def forget(db: sqlite3.Connection, name: str) -> None:
    """Drop the app's row (its revisions, placements and rollouts go with it)."""
    db.execute("DELETE FROM apps WHERE name = ?", (name,))
