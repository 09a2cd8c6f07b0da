"""Nodes: agent registration, tokens, heartbeats, liveness, and what runs on each.

A node's identity is its Docker engine id: an agent that restarts, or is
re-created on the same host, registers again and gets the same `node_id`
(and a fresh token). Tokens are stored only as SHA-256 hashes.

This module is the only writer of the `nodes` and `containers` tables: the
actual state is what agents reported, through heartbeats and task reports.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from docklet.common.errors import NotFound, Unauthorized
from docklet.common.status import ContainerState, EventKind, NodeStatus
from docklet.cp.settings import CPConfig
from docklet.cp.store import events
from docklet.cp.store.db import Store, dumps
from docklet.cp.store.secret import NODE_PREFIX, hash_secret, matches, new_secret
from docklet.wire.protocol import SAMPLED, Heartbeat, Label, ObservedContainer, Registration


def hash_token(token: str) -> str:
    return hash_secret(token)


def token_matches(token_hash: str, token: str) -> bool:
    return matches(token_hash, token)


def by_engine(db: sqlite3.Connection, engine_id: str) -> sqlite3.Row | None:
    """The node on this Docker engine (its id and token hash), or None: an engine never seen."""
    return db.execute(
        "SELECT node_id, token_hash FROM nodes WHERE engine_id = ?", (engine_id,)
    ).fetchone()


def by_token(db: sqlite3.Connection, node_id: str, token_hash: str) -> sqlite3.Row | None:
    """The node, while `token_hash` is its token; None once a newer registration replaced it."""
    return db.execute(
        "SELECT node_id FROM nodes WHERE node_id = ? AND token_hash = ?", (node_id, token_hash)
    ).fetchone()


def require_current(db: sqlite3.Connection, node_id: str, token_hash: str) -> None:
    """Raise unless `token_hash` is still the node's token: the one check an agent's task
    polls and leases pass (an agent that was replaced must not take the new one's work)."""
    if by_token(db, node_id, token_hash) is None:
        raise Unauthorized(f"node {node_id!r}: this agent was replaced by a newer registration")


def any_registered(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM nodes LIMIT 1").fetchone() is not None


def register(db: sqlite3.Connection, reg: Registration) -> tuple[str, str, bool]:
    """(node_id, token, known) for the agent on this engine; the same node_id on every restart."""
    now = time.time()
    token = new_secret(NODE_PREFIX)
    row = by_engine(db, reg.engine_id)
    if row is not None:
        node_id = row["node_id"]
        db.execute(
            "UPDATE nodes SET token_hash = ?, status = ?, last_seen = ?, registered_at = ?,"
            " hostname = ?, info = ?, report_seq = 0 WHERE node_id = ?",
            (hash_token(token), NodeStatus.ONLINE, now, now, reg.name, dumps(reg.info), node_id),
        )
        events.record(
            db, EventKind.NODE_REGISTERED, f"node {node_id}: agent restarted", node_id=node_id
        )
        return node_id, token, True
    node_id = _free_node_id(db, reg.name)
    db.execute(
        "INSERT INTO nodes (node_id, engine_id, hostname, token_hash, status, last_seen,"
        " registered_at, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            node_id,
            reg.engine_id,
            reg.name,
            hash_token(token),
            NodeStatus.ONLINE,
            now,
            now,
            dumps(reg.info),
        ),
    )
    events.record(db, EventKind.NODE_REGISTERED, f"node {node_id}: joined", node_id=node_id)
    return node_id, token, False


def _free_node_id(db: sqlite3.Connection, name: str) -> str:
    """The name itself, or name-2, name-3… when another engine already uses it."""
    taken = {
        r[0]
        for r in db.execute(
            "SELECT node_id FROM nodes WHERE node_id = ? OR node_id LIKE ? ESCAPE '\\'",
            (name, name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "-%"),
        )
    }
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def authenticate(store: Store, node_id: str, token: str | None) -> None:
    """Raise unless `token` is the node's current token."""
    row = store.one("SELECT token_hash FROM nodes WHERE node_id = ?", (node_id,))
    if row is None:
        raise NotFound(f"node {node_id!r} is not registered; restart its agent to register")
    if not token or not token_matches(row["token_hash"], token):
        raise Unauthorized(f"node {node_id!r}: missing or wrong token; restart its agent")


def unchanged(db: sqlite3.Connection, node_id: str, beat: Heartbeat) -> bool:
    """Whether this heartbeat would change nothing stored but `last_seen`.

    Reads only (on a reader connection): the node's status and Docker state,
    and its containers' fingerprints. Most heartbeats say "still here, same
    containers": they are kept in memory (see Agents.heartbeat), not written.
    """
    node = db.execute(
        "SELECT status, report_seq, docker_ok, docker_error FROM nodes WHERE node_id = ?",
        (node_id,),
    ).fetchone()
    if (
        node is None
        or node["status"] != NodeStatus.ONLINE
        or bool(node["docker_ok"]) != beat.docker_ok
        or node["docker_error"] != beat.docker_error
    ):
        return False
    if not beat.docker_ok or beat.containers is None or beat.report_seq < node["report_seq"]:
        return True  # such a snapshot is not recorded anyway
    told = {c.id: c for c in beat.containers if c.app}
    stored = _stored(db, node_id)
    return stored.keys() == told.keys() and all(same(stored[cid][1], c) for cid, c in told.items())


def _stored(db: sqlite3.Connection, node_id: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """The node's containers as stored: each one's app, and its fingerprint."""
    return {
        r[1]: (r[0], tuple(r)[1:])
        for r in db.execute(
            f"SELECT app, {', '.join(FINGERPRINT)} FROM containers WHERE node_id = ?", (node_id,)
        )
    }


def flush_seen(db: sqlite3.Connection, seen: Mapping[str, float]) -> None:
    """Write heartbeats kept in memory: one statement, one step, for all nodes. (With
    executemany each row was a step that let go of the GIL and waited to get it back:
    under load that made this write hold the writer for 400 ms.)"""
    db.execute(
        "UPDATE nodes SET last_seen = MAX(nodes.last_seen, seen.at)"
        " FROM (SELECT json_extract(value, '$[0]') AS node_id,"
        " json_extract(value, '$[1]') AS at FROM json_each(?)) AS seen"
        " WHERE nodes.node_id = seen.node_id",
        (json.dumps(list(seen.items())),),
    )


def heartbeat(db: sqlite3.Connection, node_id: str, beat: Heartbeat) -> tuple[bool, set[str]]:
    """Mark the node seen and, when the snapshot is trustworthy, record what changed in it.

    Returns what the scheduler acts on: whether the node itself changed
    (status, Docker), and the apps whose containers changed. Most heartbeats,
    which only say "still here, same containers", change neither. Costs one
    read of the node's containers, and a write only for those that changed.
    """
    now = time.time()
    node = db.execute(
        "SELECT status, report_seq, docker_ok, docker_error FROM nodes WHERE node_id = ?",
        (node_id,),
    ).fetchone()
    changed = node["status"] != NodeStatus.ONLINE or bool(node["docker_ok"]) != beat.docker_ok
    db.execute(
        "UPDATE nodes SET last_seen = ?, status = ?, docker_ok = ?, docker_error = ?"
        " WHERE node_id = ?",
        (now, NodeStatus.ONLINE, beat.docker_ok, beat.docker_error, node_id),
    )
    if node["status"] != NodeStatus.ONLINE:
        events.record(db, EventKind.NODE_ONLINE, f"node {node_id}: online again", node_id=node_id)
    # A failed Docker list is not "no containers", and a list taken before the
    # agent's latest task report may predate the container that report added.
    if not beat.docker_ok or beat.containers is None or beat.report_seq < node["report_seq"]:
        return changed, set()
    stored = _stored(db, node_id)
    seen: set[str] = set()
    apps: set[str] = set()
    for c in beat.containers:
        if not c.app:
            continue  # without an app label it cannot be attributed
        seen.add(c.id)
        before = stored.get(c.id)
        if before is None or not same(before[1], c):
            observe(db, node_id, c, now)
            apps.add(c.app)
    gone = [cid for cid in stored if cid not in seen]
    db.executemany(
        "DELETE FROM containers WHERE node_id = ? AND container_id = ?",
        [(node_id, cid) for cid in gone],
    )
    apps.update(stored[cid][0] for cid in gone)
    return changed, apps


# The columns that hold what ObservedContainer.fingerprint() holds, in its order.
FINGERPRINT = (
    "container_id",
    "state",
    "health",
    "exit_code",
    "health_log",
    "logs",
    "restarts",
    "started_at",
    "finished_at",
    "last_exit_code",
    "last_run",
    "inspected_at",
)
INSPECTED = FINGERPRINT[SAMPLED:]  # a sample without an inspect leaves these as they were
MAX_REPLACED = 100  # containers one deploy stops: a slot's older ones, a handful
_LIVE = ", ".join(f"'{s}'" for s in (ContainerState.RUNNING, ContainerState.RESTARTING))
# A run begins when a container stored as not live (created, stopped) is seen again:
# its start and restart count then are the health gate's baseline for the run.
_RUN_BEGINS = f"containers.state NOT IN ({_LIVE}, '{ContainerState.PAUSED}')"
_KEPT = ", ".join(
    f"{col} = CASE WHEN excluded.started_at IS NULL THEN containers.{col} ELSE excluded.{col} END"
    for col in INSPECTED
)
_BASELINE = ", ".join(
    f"{col} = CASE WHEN {_RUN_BEGINS} OR containers.first_started_at IS NULL"
    f" THEN excluded.{col} ELSE containers.{col} END"
    for col in ("first_started_at", "first_restarts")
)
_OBSERVE = (
    "INSERT INTO containers (node_id, container_id, name, app, revision, slot,"
    " container_hash, image, state, health, exit_code, health_log, logs, restarts,"
    " started_at, finished_at, last_exit_code, last_run, inspected_at, observed_at,"
    " down_since, first_started_at, first_restarts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (node_id, container_id) DO UPDATE SET state = excluded.state,"
    " health = excluded.health, exit_code = excluded.exit_code,"
    " health_log = excluded.health_log, logs = excluded.logs,"
    f" observed_at = excluded.observed_at, {_KEPT}, {_BASELINE},"
    " down_since = CASE WHEN excluded.down_since IS NULL THEN NULL"
    " ELSE COALESCE(containers.down_since, excluded.down_since) END"
)


def same(stored: tuple[Any, ...], c: ObservedContainer) -> bool:
    """Whether recording `c` would change nothing stored (a fingerprint as `_stored` reads
    it): a sample without an inspect is compared on what it tells."""
    told = c.fingerprint()
    return stored == told if c.inspected else stored[:SAMPLED] == told[:SAMPLED]


def observe(db: sqlite3.Connection, node_id: str, c: ObservedContainer, now: float) -> None:
    """Upsert one container as an agent saw it; remember since when it is down.

    What only an inspect tells is kept from the last inspect when this sample
    had none, and a run's baseline (its first start and restart count) is kept
    for as long as the run: a restart or an exit between two samples, or in a
    sample without an inspect, is not forgotten (see reconcile/gate.py). A task
    report replaces the row, so each deploy's run begins with its report.
    """
    first = (c.started_at, c.restarts) if c.inspected else (None, None)
    db.execute(
        _OBSERVE,
        (
            node_id,
            c.id,
            c.name,
            c.app,
            c.label_number(Label.REVISION),
            c.label_number(Label.SLOT),
            c.labels.get(Label.SPEC_HASH),
            c.image,
            *c.fingerprint()[1:],
            now,
            None if c.state == ContainerState.RUNNING else now,
            *first,
        ),
    )


def note_report(db: sqlite3.Connection, node_id: str, seq: int) -> None:
    """The agent's latest task report: heartbeats listed before it are not the whole truth."""
    db.execute("UPDATE nodes SET report_seq = MAX(report_seq, ?) WHERE node_id = ?", (seq, node_id))


def task_finished(
    db: sqlite3.Connection, node_id: str, container: str, observed: ObservedContainer | None
) -> None:
    """What a finished task left behind, recorded at once rather than at the next heartbeat."""
    db.execute("DELETE FROM containers WHERE node_id = ? AND name = ?", (node_id, container))
    if observed is not None and observed.app:
        observe(db, node_id, observed, time.time())


def replaced_stopped(db: sqlite3.Connection, node_id: str, names: Sequence[str]) -> None:
    """A deploy that succeeded stopped the containers it replaced (the agent stops each
    before it starts the new one): recorded at once, so a rollout waiting for the old
    revision to stop ends now, not at the node's next heartbeat."""
    names = [n for n in names if isinstance(n, str)][:MAX_REPLACED]
    if not names:
        return
    marks = ", ".join("?" * len(names))
    db.execute(
        f"UPDATE containers SET state = ?, down_since = COALESCE(down_since, ?)"
        f" WHERE node_id = ? AND name IN ({marks}) AND state IN (?, ?, ?)",
        (
            ContainerState.EXITED,
            time.time(),
            node_id,
            *names,
            ContainerState.RUNNING,
            ContainerState.RESTARTING,
            ContainerState.PAUSED,
        ),
    )


def last_seen(row: Any, seen: Mapping[str, float] | None = None) -> float:
    """The node's latest heartbeat: the stored one, or a newer one still only in memory."""
    stored = float(row["last_seen"])
    return max(stored, seen.get(row["node_id"], stored)) if seen else stored


def effective_last_seen(
    row: Any, started_at: float, seen: Mapping[str, float] | None = None
) -> float:
    """When the node was last heard of, as far as liveness goes.

    A control plane that was down, or overloaded (answering 503), missed
    heartbeats it could not receive: a node it last knew as alive gets a
    fresh grace from `started_at`, the CP's start or its latest 503 (as Nomad
    resets heartbeat timers after a leader election). A node already offline
    stays offline until it sends a heartbeat.
    """
    if row["status"] == NodeStatus.OFFLINE:
        return last_seen(row, seen)
    return max(last_seen(row, seen), started_at)


SEVERITY = {NodeStatus.ONLINE: 0, NodeStatus.UNKNOWN: 1, NodeStatus.OFFLINE: 2}


def status_for(age: float, config: CPConfig) -> NodeStatus:
    """A node's liveness from the seconds since its last heartbeat."""
    if age < config.unknown_seconds:
        return NodeStatus.ONLINE
    if age < config.offline_seconds:
        return NodeStatus.UNKNOWN
    return NodeStatus.OFFLINE


Change = tuple[sqlite3.Row, NodeStatus, float]  # a node as read, its new status, silent for


def liveness_changes(
    db: sqlite3.Connection,
    config: CPConfig,
    now: float,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
) -> list[Change]:
    """The nodes that stopped sending heartbeats, and their new status (a read only).

    Only towards unknown, then offline: a grace never turns an unknown node
    online again, only its heartbeat does.
    """
    changes = []
    for row in db.execute("SELECT node_id, status, last_seen FROM nodes"):
        age = now - effective_last_seen(row, started_at, seen)
        status = status_for(age, config)
        if SEVERITY[status] > SEVERITY[row["status"]]:
            changes.append((row, status, age))
    return changes


def update_liveness(db: sqlite3.Connection, changes: list[Change]) -> int:
    """Write what `liveness_changes` found, for each node not heard from since it read."""
    moved = 0
    for row, status, age in changes:
        if not db.execute(
            "UPDATE nodes SET status = ? WHERE node_id = ? AND status = ? AND last_seen = ?",
            (status, row["node_id"], row["status"], row["last_seen"]),
        ).rowcount:
            continue
        moved += 1
        events.record(
            db,
            EventKind(f"node_{status}"),
            f"node {row['node_id']}: {status} (no heartbeat for {age:.0f}s)",
            node_id=row["node_id"],
        )
    return moved
