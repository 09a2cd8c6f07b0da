"""Revisions: each app's specs as synced, numbered v1, v2, …, with their outcome.

The only writer of the `revisions` table: sync creates revisions; after
that only their status (the rollout controller's verdict), a retry, and the
image digest a first deploy pinned ever change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from docklet.common.status import RevisionStatus
from docklet.cp.store.db import among
from docklet.cp.store.rollouts import LIVE

Key = tuple[str, int]  # (app, number)


def in_play(db: sqlite3.Connection, apps: Sequence[str]) -> dict[Key, sqlite3.Row]:
    """The revisions a reconcile pass can touch: each app's stable and target ones,
    those of its live rollout, and any a slot still runs."""
    only, params = among("r.app", apps)
    rows = db.execute(
        "SELECT r.* FROM revisions r JOIN apps a ON a.name = r.app"
        " LEFT JOIN rollouts o ON o.app = r.app AND o." + LIVE + " WHERE"
        f" {only} AND (r.number IN"
        " (a.current_revision, a.target_revision, o.revision, o.from_revision)"
        " OR r.number IN (SELECT p.revision FROM placements p WHERE p.app = r.app))",
        params,
    )
    return {(r["app"], r["number"]): r for r in rows}


def statuses_by_runtime(db: sqlite3.Connection, app: str, runtime_hash: str) -> dict[int, str]:
    """Number → status of the app's revisions with this runtime hash."""
    return dict(
        db.execute(
            "SELECT number, status FROM revisions WHERE app = ? AND runtime_hash = ?",
            (app, runtime_hash),
        ).fetchall()
    )


def statuses_by_container(db: sqlite3.Connection, app: str, container_hash: str) -> dict[int, str]:
    """Number → status of the app's revisions with this container hash."""
    return dict(
        db.execute(
            "SELECT number, status FROM revisions WHERE app = ? AND container_hash = ?",
            (app, container_hash),
        ).fetchall()
    )


def latest(db: sqlite3.Connection, app: str) -> sqlite3.Row | None:
    """The app's newest revision's number and spec hash."""
    return db.execute(
        "SELECT number, spec_hash FROM revisions WHERE app = ? ORDER BY number DESC LIMIT 1",
        (app,),
    ).fetchone()


def pinned_digest(db: sqlite3.Connection, app: str, container_hash: str) -> str | None:
    """The image digest the newest revision with this container spec was pinned to."""
    row = db.execute(
        "SELECT image_digest FROM revisions WHERE app = ? AND container_hash = ?"
        " AND image_digest IS NOT NULL ORDER BY number DESC LIMIT 1",
        (app, container_hash),
    ).fetchone()
    return row["image_digest"] if row else None


def create(
    db: sqlite3.Connection,
    *,
    app: str,
    number: int,
    spec: str,
    hashes: tuple[str, str, str],
    commit: tuple[str, str, str],
    created_at: float,
    image_digest: str | None,
) -> None:
    """A new revision, pending: its spec (JSON), its (spec, container, runtime) hashes
    and the (sha, author, message) of the commit that made it."""
    db.execute(
        "INSERT INTO revisions (app, number, spec, spec_hash, container_hash, runtime_hash,"
        " commit_sha, author, message, status, created_at, image_digest)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (app, number, spec, *hashes, *commit, RevisionStatus.PENDING, created_at, image_digest),
    )


def supersede_waiting(db: sqlite3.Connection, app: str) -> None:
    """Revisions waiting to be rolled out (pending or held) are superseded, but the
    app's current one."""
    db.execute(
        "UPDATE revisions SET status = ? WHERE app = ? AND status IN (?, ?)"
        " AND number != COALESCE((SELECT current_revision FROM apps WHERE name = ?), 0)",
        (RevisionStatus.SUPERSEDED, app, RevisionStatus.PENDING, RevisionStatus.HELD, app),
    )


def set_status(
    db: sqlite3.Connection, app: str, number: int, status: str, reason: str | None
) -> None:
    db.execute(
        "UPDATE revisions SET status = ?, reason = ? WHERE app = ? AND number = ?",
        (status, reason, app, number),
    )


def retry_target(db: sqlite3.Connection, app: str) -> bool:
    """The app's held or failed target is pending again, forced past the "failed before"
    check; False when its target is neither (or is the current revision)."""
    cursor = db.execute(
        "UPDATE revisions SET status = ?, reason = NULL, forced = 1 WHERE app = ? AND number ="
        " (SELECT target_revision FROM apps WHERE name = ?) AND status IN (?, ?)"
        " AND number != (SELECT COALESCE(current_revision, 0) FROM apps WHERE name = ?)",
        (RevisionStatus.PENDING, app, app, RevisionStatus.HELD, RevisionStatus.FAILED, app),
    )
    return cursor.rowcount > 0


def pin_digest(db: sqlite3.Connection, app: str, number: int, digest: str) -> None:
    """The image the revision's first deploy ran, unless one is pinned already."""
    db.execute(
        "UPDATE revisions SET image_digest = ? WHERE app = ? AND number = ?"
        " AND image_digest IS NULL",
        (digest, app, number),
    )
