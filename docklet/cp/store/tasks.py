"""Tasks: units of work for one node, leased to its agent and reported back.

Delivery is at least once: a lease that expires, or an agent that
re-registers, hands the task out again under a new lease token. Execution
is idempotent on the agent (deterministic container names), and a report
under any lease but the current one is refused, so a task is counted once.

This module is the only writer of the `tasks` table.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from docklet.common.errors import NotFound, StaleLease
from docklet.common.status import OPEN_TASK_STATUSES, EventKind, TaskKind, TaskStatus
from docklet.cp.store import events, nodes
from docklet.cp.store.db import Store, among, dumps
from docklet.wire.protocol import TaskReport

OPEN = f"status IN ({', '.join(repr(s) for s in OPEN_TASK_STATUSES)})"


def container_name(app: str, slot: int, container_hash: str) -> str:
    """One name per slot and container spec: Docker itself then refuses a duplicate.

    The spec's hash is in the name so that a slot can hold its old and its new
    container at once during a rollout (start-first), and a rollback to a spec
    that ran before finds its container again and only starts it.
    """
    return f"docklet.{app}.{slot}.{container_hash[:8]}"


def create(
    db: sqlite3.Connection,
    *,
    node_id: str,
    app: str,
    kind: TaskKind,
    container: str,
    slot: int | None = None,
    revision: int | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    now = time.time()
    cursor = db.execute(
        "INSERT INTO tasks (node_id, app, revision, kind, slot, container, payload, status,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            node_id,
            app,
            revision,
            kind,
            slot,
            container,
            dumps(payload or {}),
            TaskStatus.PENDING,
            now,
            now,
        ),
    )
    task_id = int(cursor.lastrowid or 0)
    rev = f" v{revision}" if revision else ""
    events.record(
        db,
        EventKind.TASK_CREATED,
        f"task {task_id}: {kind} {container}{rev} on {node_id}",
        app=app,
        node_id=node_id,
        task_id=task_id,
    )
    return task_id


def waiting(store: Store, node_id: str, token_hash: str | None = None) -> bool:
    """Whether pending tasks wait for this node's agent (a read: no write lock).

    With `token_hash`, an agent whose token was replaced is refused, as `lease` does.
    """
    if token_hash is not None:
        nodes.require_current(store.reader(), node_id, token_hash)
    row = store.one(
        "SELECT 1 AS yes FROM tasks WHERE node_id = ? AND status = ? LIMIT 1",
        (node_id, TaskStatus.PENDING),
    )
    return row is not None


def lease(
    db: sqlite3.Connection, node_id: str, token_hash: str, lease_seconds: float, limit: int = 10
) -> list[dict[str, Any]]:
    """Hand this node's pending tasks to its agent, each under a fresh lease.

    The token is checked again here, in the same transaction: a long poll
    that began before its agent was replaced must not lease the new agent's work.
    """
    nodes.require_current(db, node_id, token_hash)
    now = time.time()
    rows = db.execute(
        "SELECT * FROM tasks WHERE node_id = ? AND status = ? ORDER BY id LIMIT ?",
        (node_id, TaskStatus.PENDING, limit),
    ).fetchall()
    leased = []
    for row in rows:
        token = secrets.token_urlsafe(16)
        db.execute(
            "UPDATE tasks SET status = ?, lease_token = ?, lease_expires = ?,"
            " attempts = attempts + 1, updated_at = ? WHERE id = ?",
            (TaskStatus.RUNNING, token, now + lease_seconds, now, row["id"]),
        )
        leased.append(
            {
                "id": row["id"],
                "kind": row["kind"],
                "app": row["app"],
                "slot": row["slot"],
                "revision": row["revision"],
                "container": row["container"],
                "payload": json.loads(row["payload"]),
                "lease_token": token,
                "lease_seconds": lease_seconds,
            }
        )
        events.record(
            db,
            EventKind.TASK_LEASED,
            f"task {row['id']}: leased to {node_id} (attempt {row['attempts'] + 1})",
            app=row["app"],
            node_id=node_id,
            task_id=row["id"],
        )
    return leased


def has_pending(db: sqlite3.Connection, node_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM tasks WHERE node_id = ? AND status = ? LIMIT 1",
        (node_id, TaskStatus.PENDING),
    ).fetchone()
    return row is not None


def report(
    db: sqlite3.Connection, node_id: str, task_id: int, outcome: TaskReport, lease_seconds: float
) -> dict[str, Any]:
    """Apply an agent's report on a task it holds the current lease for."""
    row = None
    if 0 < task_id < 2**63:
        row = db.execute(
            "SELECT * FROM tasks WHERE id = ? AND node_id = ?", (task_id, node_id)
        ).fetchone()
    if row is None:
        raise NotFound(f"task {task_id} is not a task of node {node_id}")
    if row["status"] != TaskStatus.RUNNING or not secrets.compare_digest(
        row["lease_token"] or "", outcome.lease_token
    ):
        raise StaleLease(
            f"task {task_id}: this lease is no longer current (task is {row['status']})"
        )
    now = time.time()
    if outcome.seq is not None:
        nodes.note_report(db, node_id, outcome.seq)
    if outcome.status == TaskStatus.RUNNING:  # still working: extend the lease
        db.execute(
            "UPDATE tasks SET lease_expires = ?, updated_at = ? WHERE id = ?",
            (now + lease_seconds, now, task_id),
        )
        return {"status": outcome.status, "lease_expires": now + lease_seconds}
    error = outcome.error
    db.execute(
        "UPDATE tasks SET status = ?, container_id = ?, error = ?, lease_token = NULL,"
        " lease_expires = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
        (outcome.status, outcome.container_id, error, now, now, task_id),
    )
    nodes.task_finished(db, node_id, row["container"], outcome.container)
    if outcome.status == TaskStatus.DONE and row["kind"] == TaskKind.DEPLOY:
        replaces = json.loads(row["payload"] or "{}").get("replaces") or []
        nodes.replaced_stopped(db, node_id, replaces)
    detail = f": {error}" if error else ""
    events.record(
        db,
        EventKind(f"task_{outcome.status}"),
        f"task {task_id}: {row['kind']} {row['container']} {outcome.status}{detail}",
        app=row["app"],
        node_id=node_id,
        task_id=task_id,
    )
    return {"status": outcome.status, "app": row["app"], "revision": row["revision"]}


def requeue_node(db: sqlite3.Connection, node_id: str) -> None:
    """The agent that held this node's leases is gone: hand its work out again."""
    db.execute(
        "UPDATE tasks SET status = ?, lease_token = NULL, lease_expires = NULL"
        " WHERE node_id = ? AND status = ?",
        (TaskStatus.PENDING, node_id, TaskStatus.RUNNING),
    )


def expire_leases(db: sqlite3.Connection, now: float, max_attempts: int) -> int:
    """Tasks whose agent went quiet go back to pending, or fail after too many tries.

    Returns how many.
    """
    rows = db.execute(
        "SELECT id, app, node_id, attempts FROM tasks WHERE status = ? AND lease_expires < ?",
        (TaskStatus.RUNNING, now),
    ).fetchall()
    for row in rows:
        if row["attempts"] >= max_attempts:
            status = TaskStatus.FAILED
            error = f"no report from node {row['node_id']} after {row['attempts']} leases"
        else:
            status, error = TaskStatus.PENDING, None
        # `lost`: nobody said no, so the scheduler may try again later.
        db.execute(
            "UPDATE tasks SET status = ?, error = ?, lost = 1, lease_token = NULL,"
            " lease_expires = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
            (status, error, now, now if error else None, row["id"]),
        )
        events.record(
            db,
            EventKind.TASK_FAILED if error else EventKind.TASK_REQUEUED,
            f"task {row['id']}: {error or 'lease expired; queued again'}",
            app=row["app"],
            node_id=row["node_id"],
            task_id=row["id"],
        )
    return len(rows)


def cancel_pending(
    db: sqlite3.Connection,
    app: str,
    reason: str,
    *,
    kind: TaskKind | None = None,
    slot: int | None = None,
    node_id: str | None = None,
) -> None:
    """Drop queued work that no longer matches what the app should be."""
    now = time.time()
    where, params = ["app = ?", "status = ?"], [app, TaskStatus.PENDING]
    for column, value in (("kind", kind), ("slot", slot), ("node_id", node_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    db.execute(
        "UPDATE tasks SET status = ?, error = ?, updated_at = ?, finished_at = ?"
        f" WHERE {' AND '.join(where)}",
        (TaskStatus.CANCELLED, reason, now, now, *params),
    )


def open_tasks(
    db: sqlite3.Connection, apps: Sequence[str] | None = None
) -> dict[str, dict[tuple[str, str], sqlite3.Row]]:
    """Pending and leased tasks (of `apps`, or all), by app, then by (node, container)."""
    out: dict[str, dict[tuple[str, str], sqlite3.Row]] = {}
    only, params = among("app", apps)
    for r in db.execute(f"SELECT * FROM tasks WHERE {OPEN} AND {only}", params):
        out.setdefault(r["app"], {})[(r["node_id"], r["container"])] = r
    return out


def latest_per_container(
    db: sqlite3.Connection, apps: Sequence[str] | None = None
) -> dict[tuple[str, str], sqlite3.Row]:
    """The newest task that was not cancelled, per (node, container) (of `apps`, or all)."""
    only, params = among("app", apps)
    rows = db.execute(
        "SELECT t.app, t.slot, t.node_id, t.container, t.kind, t.status, t.revision, t.lost,"
        " t.finished_at, t.error"
        f" FROM tasks t JOIN (SELECT MAX(id) AS id FROM tasks WHERE status != ? AND {only}"
        " GROUP BY node_id, container) m ON m.id = t.id",
        (TaskStatus.CANCELLED, *params),
    )
    return {(r["node_id"], r["container"]): r for r in rows}


def forget_app(db: sqlite3.Connection, app: str) -> None:
    db.execute("DELETE FROM tasks WHERE app = ?", (app,))


PRUNE_BATCH = 500  # tasks one prune deletes at most: the next one takes the rest


def prune(db: sqlite3.Connection, before: float) -> int:
    """Finished tasks are history; keep the newest per container (the scheduler reads it).

    Deletes at most PRUNE_BATCH, so one transaction stays short however much
    history piled up; returns how many.
    """
    return db.execute(
        "DELETE FROM tasks WHERE id IN (SELECT t.id FROM tasks t"
        " WHERE t.status IN (?, ?, ?) AND t.finished_at < ?"
        " AND (t.status = ? OR EXISTS (SELECT 1 FROM tasks n WHERE n.node_id = t.node_id"
        " AND n.container = t.container AND n.id > t.id AND n.status != ?)) LIMIT ?)",
        (
            TaskStatus.DONE,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            before,
            TaskStatus.CANCELLED,
            TaskStatus.CANCELLED,
            PRUNE_BATCH,
        ),
    ).rowcount
