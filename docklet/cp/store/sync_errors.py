"""Sync errors: the spec files the last sync could not use, and why.

The only writer of the `sync_errors` table: each sync replaces it whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping


def paths(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT path FROM sync_errors")]


def replace(db: sqlite3.Connection, commit_sha: str, errors: Mapping[str, str]) -> None:
    """The errors of the commit just synced, path → message, instead of the last ones."""
    db.execute("DELETE FROM sync_errors")
    db.executemany(
        "INSERT INTO sync_errors (path, commit_sha, message) VALUES (?, ?, ?)",
        [(path, commit_sha, message) for path, message in errors.items()],
    )
