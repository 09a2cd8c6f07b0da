"""The scheduler: turns desired state and observed containers into tasks.

Each pass compares, per app, what should run (the current revision's
replicas, each in a slot placed on a node) with what agents last reported,
and queues the tasks that close the gap. A pass is idempotent: a slot with
an open task is left alone, so running it twice queues nothing twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from typing import Any

from docklet import defaults, tasks
from docklet.config import CPConfig
from docklet.nodes import update_liveness
from docklet.spec import AppSpec
from docklet.status import ContainerState, DesiredState, NodeStatus, TaskKind, TaskStatus
from docklet.store import Store, record_event

log = logging.getLogger(__name__)


def reconcile(store: Store, config: CPConfig, now: float | None = None) -> int:
    """One pass over every app; returns how many tasks it queued."""
    now = time.time() if now is None else now
    with store.write() as db:
        update_liveness(db, config, now)
        tasks.expire_leases(db, now)
        queued = 0
        nodes = {r["node_id"]: r for r in db.execute("SELECT * FROM nodes").fetchall()}
        for app in db.execute("SELECT * FROM apps ORDER BY name").fetchall():
            queued += _reconcile_app(db, app, nodes, config, now)
        queued += _remove_orphans(db)
        # The event log is for recent history: keep the newest EVENTS_KEPT.
        db.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
            (defaults.EVENTS_KEPT,),
        )
        if queued:
            log.debug("reconcile: %d task(s) queued", queued)
    return queued


def _reconcile_app(
    db: sqlite3.Connection,
    app: sqlite3.Row,
    nodes: dict[str, sqlite3.Row],
    config: CPConfig,
    now: float,
) -> int:
    name = app["name"]
    containers = db.execute("SELECT * FROM containers WHERE app = ?", (name,)).fetchall()
    if app["desired"] == DesiredState.RUNNING and app["current_revision"] is not None:
        tasks.cancel_pending(db, name, "app is running again", kind=TaskKind.STOP)
        return _run(db, app, nodes, containers, tasks.open_tasks(db, name), config, now)
    open_ = tasks.open_tasks(db, name)
    tasks.cancel_pending(db, name, f"app is {app['desired']}", kind=TaskKind.DEPLOY)
    if app["desired"] == DesiredState.STOPPED:
        return _for_each(db, name, containers, open_, TaskKind.STOP, only_running=True)
    # What only an offline node still holds need not keep the app: once the
    # node returns, its leftovers are orphans and are removed then.
    if not any(_reachable(nodes, c["node_id"]) for c in containers) and not any(
        _reachable(nodes, node_id) for node_id, _ in open_
    ):
        _forget(db, name)
        return 0
    return _for_each(db, name, containers, open_, TaskKind.REMOVE, only_running=False)


def _reachable(nodes: dict[str, sqlite3.Row], node_id: str) -> bool:
    node = nodes.get(node_id)
    return node is not None and node["status"] != NodeStatus.OFFLINE


def _run(
    db: sqlite3.Connection,
    app: sqlite3.Row,
    nodes: dict[str, sqlite3.Row],
    containers: list[sqlite3.Row],
    open_: dict[tuple[str, str], sqlite3.Row],
    config: CPConfig,
    now: float,
) -> int:
    name = app["name"]
    rev = db.execute(
        "SELECT * FROM revisions WHERE app = ? AND number = ?", (name, app["current_revision"])
    ).fetchone()
    spec = AppSpec.model_validate(json.loads(rev["spec"]))
    placements = dict(
        db.execute("SELECT slot, node_id FROM placements WHERE app = ?", (name,)).fetchall()
    )
    eligible = [
        n
        for n, row in nodes.items()
        if row["status"] == NodeStatus.ONLINE
        and row["docker_ok"]
        and (not spec.placement.nodes or n in spec.placement.nodes)
    ]
    queued = 0
    unplaced = False
    for slot in range(1, spec.replicas + 1):
        node_id = placements.get(slot)
        if node_id is None or _must_move(node_id, nodes, spec):
            node_id = _place(db, name, slot, eligible, placements)
            if node_id is None:
                unplaced = True
                continue
        cname = tasks.container_name(name, slot)
        if (node_id, cname) in open_:
            continue
        here = [c for c in containers if c["node_id"] == node_id and c["name"] == cname]
        if _needs_deploy(db, app, rev, slot, here, nodes[node_id], config, now):
            tasks.create(
                db,
                node_id=node_id,
                app=name,
                kind=TaskKind.DEPLOY,
                container=cname,
                slot=slot,
                revision=rev["number"],
                payload=deploy_payload(spec, rev),
            )
            queued += 1
    _set_error(db, name, _unplaced_reason(spec) if unplaced else None)
    db.execute("DELETE FROM placements WHERE app = ? AND slot > ?", (name, spec.replicas))
    # Containers of slots that no longer exist, or that now live on another node.
    for c in containers:
        misplaced = (
            c["slot"] is None
            or c["slot"] > spec.replicas
            or placements.get(c["slot"]) not in (None, c["node_id"])
        )
        if misplaced and (c["node_id"], c["name"]) not in open_:
            tasks.create(
                db,
                node_id=c["node_id"],
                app=name,
                kind=TaskKind.REMOVE,
                container=c["name"],
                slot=c["slot"],
            )
            open_[(c["node_id"], c["name"])] = c
            queued += 1
    return queued


def _must_move(node_id: str, nodes: dict[str, sqlite3.Row], spec: AppSpec) -> bool:
    """A slot leaves its node only when the node is gone or no longer allowed."""
    node = nodes.get(node_id)
    if node is None or node["status"] == NodeStatus.OFFLINE:
        return True
    return bool(spec.placement.nodes) and node_id not in spec.placement.nodes


def _place(
    db: sqlite3.Connection, app: str, slot: int, eligible: list[str], placements: dict[int, str]
) -> str | None:
    """Spread: the eligible node with the fewest of this app's slots, then fewest overall."""
    if not eligible:
        return None
    mine = Counter(n for s, n in placements.items() if s != slot)
    overall = Counter(
        dict(db.execute("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id").fetchall())
    )
    node_id = min(eligible, key=lambda n: (mine[n], overall[n], n))
    db.execute(
        "INSERT INTO placements (app, slot, node_id) VALUES (?, ?, ?)"
        " ON CONFLICT (app, slot) DO UPDATE SET node_id = excluded.node_id",
        (app, slot, node_id),
    )
    previous = placements.get(slot)
    if previous and previous != node_id:  # work queued for the old node is moot now
        tasks.cancel_pending(
            db, app, f"slot {slot} moved to {node_id}", slot=slot, node_id=previous
        )
    placements[slot] = node_id
    moved = f" (moved from {previous})" if previous else ""
    record_event(
        db, "slot_placed", f"app {app}: slot {slot} on {node_id}{moved}", app=app, node_id=node_id
    )
    return node_id


def _needs_deploy(
    db: sqlite3.Connection,
    app: sqlite3.Row,
    rev: sqlite3.Row,
    slot: int,
    here: list[sqlite3.Row],
    node: sqlite3.Row,
    config: CPConfig,
    now: float,
) -> bool:
    current = [c for c in here if c["container_hash"] == rev["container_hash"]]
    if any(c["state"] == ContainerState.RUNNING for c in current):
        return False
    last = db.execute(
        "SELECT kind, status, revision, lost, finished_at FROM tasks"
        " WHERE app = ? AND slot = ? AND node_id = ? AND status != ? ORDER BY id DESC LIMIT 1",
        (rev["app"], slot, node["node_id"], TaskStatus.CANCELLED),
    ).fetchone()
    if last is None or last["kind"] != TaskKind.DEPLOY or last["revision"] != rev["number"]:
        return True  # never deployed here, or Docklet itself stopped it: start it now
    if last["status"] == TaskStatus.FAILED:
        if last["lost"]:  # nobody said no (the agent went quiet): try again after a while
            return bool(node["docker_ok"]) and now - last["finished_at"] >= config.heal_delay
        # Docker said no: shown to the user, not retried in a loop. A new
        # revision, or stopping and starting the app, tries again.
        return app["updated_at"] > last["finished_at"]
    # Deployed once and now down: restart it after a grace period (so a crash
    # is visible, as with a restart delay), or at once if its agent restarted.
    down_since = current[0]["down_since"] if current else last["finished_at"]
    if down_since is None or (not current and node["last_seen"] <= last["finished_at"]):
        return False  # no heartbeat since the deploy finished: nothing known yet
    # An app stopped and started again since, like a restarted agent, runs now.
    restarted = max(node["registered_at"], app["updated_at"])
    return now - down_since >= config.heal_delay or restarted > down_since


def deploy_payload(spec: AppSpec, rev: sqlite3.Row) -> dict[str, Any]:
    """What an agent needs to create the container: the container part of the spec."""
    return {**spec.container_spec(), "container_hash": rev["container_hash"]}


def _for_each(
    db: sqlite3.Connection,
    app: str,
    containers: list[sqlite3.Row],
    open_: dict[tuple[str, str], sqlite3.Row],
    kind: TaskKind,
    *,
    only_running: bool,
) -> int:
    queued = 0
    for c in containers:
        if only_running and not ContainerState.is_live(c["state"]):
            continue
        if (c["node_id"], c["name"]) in open_:
            continue
        tasks.create(
            db,
            node_id=c["node_id"],
            app=app,
            kind=kind,
            container=c["name"],
            slot=c["slot"],
            revision=c["revision"],
        )
        open_[(c["node_id"], c["name"])] = c
        queued += 1
    return queued


def _remove_orphans(db: sqlite3.Connection) -> int:
    """Containers labelled for apps this CP no longer knows (removed while a node was away)."""
    rows = db.execute(
        "SELECT c.* FROM containers c LEFT JOIN apps a ON a.name = c.app WHERE a.name IS NULL"
    ).fetchall()
    queued = 0
    for c in rows:
        if (c["node_id"], c["name"]) in tasks.open_tasks(db, c["app"]):
            continue
        tasks.create(
            db,
            node_id=c["node_id"],
            app=c["app"],
            kind=TaskKind.REMOVE,
            container=c["name"],
            slot=c["slot"],
        )
        queued += 1
    return queued


def _forget(db: sqlite3.Connection, app: str) -> None:
    """The app is gone from the repo and from every node: drop its records."""
    db.execute("DELETE FROM apps WHERE name = ?", (app,))
    db.execute("DELETE FROM tasks WHERE app = ?", (app,))
    record_event(db, "app_forgotten", f"app {app}: removed from every node", app=app)


def _unplaced_reason(spec: AppSpec) -> str:
    if spec.placement.nodes:
        return f"no online node among placement.nodes ({', '.join(spec.placement.nodes)})"
    return "no online node to run it: start an agent (docklet-agent) on a Docker host"


def _set_error(db: sqlite3.Connection, app: str, message: str | None) -> None:
    row = db.execute("SELECT last_error FROM apps WHERE name = ?", (app,)).fetchone()
    if row["last_error"] != message:
        db.execute("UPDATE apps SET last_error = ? WHERE name = ?", (message, app))
        if message:
            record_event(db, "app_unschedulable", f"app {app}: {message}", app=app)
