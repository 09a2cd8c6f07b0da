"""Nodes: agent registration, tokens, heartbeats and liveness.

A node's identity is its Docker engine id: an agent that restarts, or is
re-created on the same host, registers again and gets the same `node_id`
(and a fresh token). Tokens are stored only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from typing import Any

from docklet.config import CPConfig
from docklet.errors import BadRequest, NotFound, Unauthorized
from docklet.protocol import Heartbeat, ObservedContainer, parse
from docklet.status import ContainerState, NodeStatus, TaskStatus
from docklet.store import Store, dumps, record_event


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register(
    db: sqlite3.Connection, engine_id: str, name: str, info: dict[str, Any]
) -> tuple[str, str]:
    """(node_id, token) for the agent on this engine; the same node_id on every restart."""
    if not engine_id or not name:
        raise BadRequest("registration needs 'engine_id' and 'name'")
    now = time.time()
    token = secrets.token_urlsafe(32)
    row = db.execute("SELECT node_id FROM nodes WHERE engine_id = ?", (engine_id,)).fetchone()
    if row is not None:
        node_id = row["node_id"]
        db.execute(
            "UPDATE nodes SET token_hash = ?, status = ?, last_seen = ?, registered_at = ?,"
            " hostname = ?, info = ?, report_seq = 0 WHERE node_id = ?",
            (hash_token(token), NodeStatus.ONLINE, now, now, name, dumps(info), node_id),
        )
        # The agent that held these leases is gone: hand the work out again.
        db.execute(
            "UPDATE tasks SET status = ?, lease_token = NULL, lease_expires = NULL"
            " WHERE node_id = ? AND status = ?",
            (TaskStatus.PENDING, node_id, TaskStatus.RUNNING),
        )
        record_event(db, "node_registered", f"node {node_id}: agent restarted", node_id=node_id)
        return node_id, token
    node_id = _free_node_id(db, name)
    db.execute(
        "INSERT INTO nodes (node_id, engine_id, hostname, token_hash, status, last_seen,"
        " registered_at, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (node_id, engine_id, name, hash_token(token), NodeStatus.ONLINE, now, now, dumps(info)),
    )
    record_event(db, "node_registered", f"node {node_id}: joined", node_id=node_id)
    return node_id, token


def _free_node_id(db: sqlite3.Connection, name: str) -> str:
    """The name itself, or name-2, name-3… when another engine already uses it."""
    candidate, n = name, 1
    while db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (candidate,)).fetchone():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def authenticate(store: Store, node_id: str, token: str | None) -> None:
    """Raise unless `token` is the node's current token."""
    row = store.one("SELECT token_hash FROM nodes WHERE node_id = ?", (node_id,))
    if row is None:
        raise NotFound(f"node {node_id!r} is not registered; restart its agent to register")
    if not token or not hmac.compare_digest(row["token_hash"], hash_token(token)):
        raise Unauthorized(f"node {node_id!r}: missing or wrong token; restart its agent")


def heartbeat(db: sqlite3.Connection, node_id: str, body: Any) -> bool:
    """Mark the node seen and, when the snapshot is trustworthy, replace its containers.

    Returns whether anything the scheduler acts on changed (so most heartbeats,
    which only say "still here, same containers", wake nothing).
    """
    beat = parse(Heartbeat, body)
    now = time.time()
    node = db.execute(
        "SELECT status, report_seq, docker_ok FROM nodes WHERE node_id = ?", (node_id,)
    ).fetchone()
    changed = node["status"] != NodeStatus.ONLINE or bool(node["docker_ok"]) != beat.docker_ok
    db.execute(
        "UPDATE nodes SET last_seen = ?, status = ?, docker_ok = ?, docker_error = ?"
        " WHERE node_id = ?",
        (now, NodeStatus.ONLINE, beat.docker_ok, beat.docker_error, node_id),
    )
    if node["status"] != NodeStatus.ONLINE:
        record_event(db, "node_online", f"node {node_id}: online again", node_id=node_id)
    # A failed Docker list is not "no containers", and a list taken before the
    # agent's latest task report may predate the container that report added.
    if not beat.docker_ok or beat.containers is None or beat.report_seq < node["report_seq"]:
        return changed
    before = _states(db, node_id)
    seen = [c.id for c in beat.containers if observe(db, node_id, c, now)]
    marks = ",".join("?" * len(seen))
    db.execute(
        f"DELETE FROM containers WHERE node_id = ? AND container_id NOT IN ({marks})",
        (node_id, *seen),
    )
    return changed or _states(db, node_id) != before


def _states(db: sqlite3.Connection, node_id: str) -> set[tuple[Any, ...]]:
    rows = db.execute(
        "SELECT container_id, state, health FROM containers WHERE node_id = ?", (node_id,)
    )
    return {tuple(r) for r in rows}


def observe(db: sqlite3.Connection, node_id: str, c: ObservedContainer, now: float) -> bool:
    """Upsert one container as an agent saw it; remember since when it is down.

    A container without an app label cannot be attributed and is left out.
    """
    if not c.app:
        return False
    db.execute(
        "INSERT INTO containers (node_id, container_id, name, app, revision, slot,"
        " container_hash, image, state, health, exit_code, restarts, observed_at, down_since)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (node_id, container_id) DO UPDATE SET state = excluded.state,"
        " health = excluded.health, exit_code = excluded.exit_code,"
        " restarts = excluded.restarts, observed_at = excluded.observed_at,"
        " down_since = CASE WHEN excluded.down_since IS NULL THEN NULL"
        " ELSE COALESCE(containers.down_since, excluded.down_since) END",
        (
            node_id,
            c.id,
            c.name,
            c.app,
            c.label_number("docklet.revision"),
            c.label_number("docklet.slot"),
            c.labels.get("docklet.spec-hash"),
            c.image,
            c.state,
            c.health,
            c.exit_code,
            c.restarts,
            now,
            None if c.state == ContainerState.RUNNING else now,
        ),
    )
    return True


def status_for(age: float, config: CPConfig) -> NodeStatus:
    """A node's liveness from the seconds since its last heartbeat."""
    if age < config.unknown_seconds:
        return NodeStatus.ONLINE
    if age < config.offline_seconds:
        return NodeStatus.UNKNOWN
    return NodeStatus.OFFLINE


def update_liveness(db: sqlite3.Connection, config: CPConfig, now: float) -> None:
    """Move nodes that stopped sending heartbeats to unknown, then offline."""
    for row in db.execute("SELECT node_id, status, last_seen FROM nodes").fetchall():
        status = status_for(now - row["last_seen"], config)
        if status != row["status"]:
            db.execute("UPDATE nodes SET status = ? WHERE node_id = ?", (status, row["node_id"]))
            record_event(
                db,
                f"node_{status}",
                f"node {row['node_id']}: {status}"
                f" (last heartbeat {now - row['last_seen']:.0f}s ago)",
                node_id=row["node_id"],
            )
