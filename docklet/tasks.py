"""Tasks: units of work for one node, leased to its agent and reported back.

Delivery is at least once: a lease that expires, or an agent that
re-registers, hands the task out again under a new lease token. Execution
is idempotent on the agent (deterministic container names), and a report
under any lease but the current one is refused, so a task is counted once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from docklet import defaults
from docklet.errors import NotFound, StaleLease, Unauthorized
from docklet.nodes import observe
from docklet.protocol import TaskReport, parse
from docklet.status import OPEN_TASK_STATUSES, TaskKind, TaskStatus
from docklet.store import dumps, record_event


def container_name(app: str, slot: int) -> str:
    """One name per slot: Docker itself then refuses a second container for it."""
    return f"docklet.{app}.{slot}"


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
    record_event(
        db,
        "task_created",
        f"task {task_id}: {kind} {container}{rev} on {node_id}",
        app=app,
        node_id=node_id,
        task_id=task_id,
    )
    return task_id


def lease(
    db: sqlite3.Connection, node_id: str, token_hash: str, lease_seconds: float, limit: int = 10
) -> list[dict[str, Any]]:
    """Hand this node's pending tasks to its agent, each under a fresh lease.

    The token is checked again here, in the same transaction: a long poll
    that began before its agent was replaced must not lease the new agent's work.
    """
    node = db.execute("SELECT token_hash FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    if node is None or node["token_hash"] != token_hash:
        raise Unauthorized(f"node {node_id!r}: this agent was replaced by a newer registration")
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
        record_event(
            db,
            "task_leased",
            f"task {row['id']}: leased to {node_id} (attempt {row['attempts'] + 1})",
            app=row["app"],
            node_id=node_id,
            task_id=row["id"],
        )
    return leased


def report(
    db: sqlite3.Connection, node_id: str, task_id: int, body: Any, lease_seconds: float
) -> dict[str, Any]:
    """Apply an agent's report on a task it holds the current lease for."""
    outcome = parse(TaskReport, body)
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
        db.execute(
            "UPDATE nodes SET report_seq = MAX(report_seq, ?) WHERE node_id = ?",
            (outcome.seq, node_id),
        )
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
    # Record what the task left behind at once, rather than at the next heartbeat.
    db.execute("DELETE FROM containers WHERE node_id = ? AND name = ?", (node_id, row["container"]))
    if outcome.container is not None:
        observe(db, node_id, outcome.container, now)
    detail = f": {error}" if error else ""
    record_event(
        db,
        f"task_{outcome.status}",
        f"task {task_id}: {row['kind']} {row['container']} {outcome.status}{detail}",
        app=row["app"],
        node_id=node_id,
        task_id=task_id,
    )
    return {"status": outcome.status}


def expire_leases(db: sqlite3.Connection, now: float) -> None:
    """Tasks whose agent went quiet go back to pending, or fail after too many tries."""
    rows = db.execute(
        "SELECT id, app, node_id, attempts FROM tasks WHERE status = ? AND lease_expires < ?",
        (TaskStatus.RUNNING, now),
    ).fetchall()
    for row in rows:
        if row["attempts"] >= defaults.TASK_MAX_ATTEMPTS:
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
        record_event(
            db,
            f"task_{'failed' if error else 'requeued'}",
            f"task {row['id']}: {error or 'lease expired; queued again'}",
            app=row["app"],
            node_id=row["node_id"],
            task_id=row["id"],
        )


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


def open_tasks(db: sqlite3.Connection, app: str) -> dict[tuple[str, str], sqlite3.Row]:
    """Pending and leased tasks of an app by (node, container)."""
    marks = ",".join("?" * len(OPEN_TASK_STATUSES))
    rows = db.execute(
        f"SELECT * FROM tasks WHERE app = ? AND status IN ({marks})", (app, *OPEN_TASK_STATUSES)
    ).fetchall()
    return {(r["node_id"], r["container"]): r for r in rows}
