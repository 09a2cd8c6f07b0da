"""Named reads for GET /metrics: what changed in rollouts and tasks since the last scrape.

Each read walks the primary key (rows after an id, or rows by id), never a
whole table: a scrape costs what happened since the one before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docklet.cp.store.db import Store

ROLLOUT_COLUMNS = "id, status, created_at, finished_at"
TASK_COLUMNS = "id, kind, status, created_at, finished_at"


def newest_ids(store: Store) -> tuple[int, int]:
    """The newest rollout's and task's ids: a CP counts only what comes after its start."""
    row = store.one(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM rollouts) AS rollouts,"
        " (SELECT COALESCE(MAX(id), 0) FROM tasks) AS tasks"
    )
    return (row["rollouts"], row["tasks"]) if row else (0, 0)


def rollouts_after(store: Store, after: int, limit: int) -> list[dict[str, Any]]:
    return store.query(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    )


def rollouts_by_id(store: Store, ids: Sequence[int]) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(ids))
    return store.query(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id IN ({marks})", tuple(ids))


def tasks_after(store: Store, after: int, limit: int) -> list[dict[str, Any]]:
    return store.query(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    )


def tasks_by_id(store: Store, ids: Sequence[int]) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(ids))
    return store.query(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({marks})", tuple(ids))
