"""Rollouts: one app's move from one revision to the next, a row per attempt.

The only writer of the `rollouts` table. The rollout controller
(docklet.cp.reconcile.rollout) decides each transition; its plan is applied
through `start` and `update`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from docklet.common.status import LIVE_ROLLOUT_STATUSES
from docklet.cp.store.db import among

# A rollout that is not over yet (at most one per app: the schema's unique index).
LIVE = f"status IN ({', '.join(repr(s) for s in LIVE_ROLLOUT_STATUSES)})"

COLUMNS = frozenset(
    {
        "app",
        "revision",
        "from_revision",
        "status",
        "canary_slot",
        "canary_node",
        "saved",
        "done",
        "total",
        "phase_started_at",
        "deadline",
        "progress_deadline",
        "reason",
        "failed_phase",
        "evidence",
        "created_at",
        "updated_at",
        "finished_at",
    }
)


def live(db: sqlite3.Connection, apps: Sequence[str] | None) -> dict[str, sqlite3.Row]:
    """The live rollout of each app (of `apps`, or all) that has one."""
    only, params = among("app", apps)
    return {
        r["app"]: r for r in db.execute(f"SELECT * FROM rollouts WHERE {LIVE} AND {only}", params)
    }


def start(db: sqlite3.Connection, fields: Mapping[str, Any]) -> int:
    """A new rollout; returns its id."""
    names = _checked(fields)
    cursor = db.execute(
        f"INSERT INTO rollouts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [fields[n] for n in names],
    )
    return int(cursor.lastrowid or 0)


def update(db: sqlite3.Connection, rollout_id: int, fields: Mapping[str, Any]) -> None:
    names = _checked(fields)
    sets = ", ".join(f"{n} = ?" for n in names)
    db.execute(
        f"UPDATE rollouts SET {sets} WHERE id = ?", [*(fields[n] for n in names), rollout_id]
    )


def _checked(fields: Mapping[str, Any]) -> list[str]:
    """The column names, each one known: they are spliced into the statement."""
    unknown = set(fields) - COLUMNS
    if unknown:
        raise ValueError(f"rollouts: no such column(s): {', '.join(sorted(unknown))}")
    return list(fields)


def extend_deadlines(db: sqlite3.Connection, by: float) -> None:
    """Every live rollout's deadlines move `by` seconds later."""
    db.execute(
        f"UPDATE rollouts SET deadline = deadline + ?, progress_deadline = progress_deadline + ?"
        f" WHERE {LIVE}",
        (by, by),
    )


def unrecorded(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Finished rollouts whose outcome is not yet written to the repository, with the
    commits of both revisions."""
    return db.execute(
        "SELECT r.*, t.commit_sha AS to_commit, f.commit_sha AS from_commit FROM rollouts r"
        " JOIN revisions t ON t.app = r.app AND t.number = r.revision"
        " JOIN revisions f ON f.app = r.app AND f.number = r.from_revision"
        f" WHERE r.recorded = 0 AND NOT r.{LIVE}"
    ).fetchall()


def mark_recorded(db: sqlite3.Connection, rollout_id: int) -> None:
    db.execute("UPDATE rollouts SET recorded = 1 WHERE id = ?", (rollout_id,))
