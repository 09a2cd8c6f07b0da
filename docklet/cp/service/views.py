"""Read models: what the API shows of apps and nodes, desired next to actual."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from docklet.common.status import (
    ActualState,
    AppStatus,
    ContainerState,
    DesiredState,
    NodeStatus,
    RevisionStatus,
    RolloutStatus,
    TaskKind,
    TaskStatus,
)
from docklet.cp.desired.edits import app_name
from docklet.cp.reconcile.rollout import view as rollout_view
from docklet.cp.settings import CPConfig
from docklet.cp.store.db import Store
from docklet.cp.store.nodes import effective_last_seen, last_seen, status_for
from docklet.cp.store.tasks import OPEN


def nodes_view(
    store: Store,
    config: CPConfig,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Every node; `seen` holds heartbeats kept in memory, newer than the stored ones."""
    now = time.time()
    counts = dict(
        (r["node_id"], r["n"])
        for r in store.query("SELECT node_id, COUNT(*) AS n FROM containers GROUP BY node_id")
    )
    views = []
    for r in store.query("SELECT * FROM nodes ORDER BY node_id"):
        heard = last_seen(r, seen)
        views.append(
            {
                "node_id": r["node_id"],
                # Derived from last_seen at read time, so a dead node shows at once.
                "status": status_for(now - effective_last_seen(r, started_at, seen), config),
                "last_seen": heard,
                "last_seen_ago": round(now - heard, 1),
                "hostname": r["hostname"],
                "engine_id": r["engine_id"],
                "docker_ok": bool(r["docker_ok"]),
                "docker_error": r["docker_error"],
                "containers": counts.get(r["node_id"], 0),
                "registered_at": r["registered_at"],
                "info": json.loads(r["info"]),
            }
        )
    return views


@dataclass
class AppRows:
    """Everything the app views read, in one query per table rather than per app."""

    revisions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # the latest, per app
    containers: dict[str, list[sqlite3.Row]] = field(default_factory=lambda: defaultdict(list))
    tasks: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    placements: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sync_errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, store: Store, name: str | None, brief: bool = False) -> AppRows:
        """`brief`: only what a brief view shows of containers (not each one's details)."""
        rows = cls()
        where, params = ("WHERE app = ?", (name,)) if name else ("", ())
        for r in store.query(
            "SELECT r.* FROM revisions r JOIN apps a"
            " ON a.name = r.app AND r.number IN (a.current_revision, a.target_revision)"
            + (" WHERE a.name = ?" if name else ""),
            params,
        ):
            rows.revisions[(r["app"], r["number"])] = r
        for r in store.query(
            "SELECT * FROM rollouts WHERE id IN (SELECT MAX(id) FROM rollouts"
            + (" WHERE app = ?" if name else "")
            + " GROUP BY app)",
            params,
        ):
            rows.rollouts[r["app"]] = r
        # The columns a view shows, as rows (not dicts): ten thousand of them in a `ps`.
        columns = (
            "app, node_id, state, container_hash"
            if brief
            else "app, slot, node_id, container_id, name, state, health, exit_code, revision,"
            " container_hash, image"
        )
        order = "" if brief else "ORDER BY slot, node_id"
        query = f"SELECT {columns} FROM containers {where} {order}"
        for c in store.reader().execute(query, params):
            rows.containers[c[0]].append(c)
        for t in store.query(
            "SELECT id, app, kind, slot, node_id, status, revision, attempts FROM tasks"
            f" {where or 'WHERE 1'} AND {OPEN} ORDER BY id",
            params,
        ):
            rows.tasks[t.pop("app")].append(t)
        for f in _failures(store, name):
            rows.failures[f.pop("app")].append(f)
        for app, node_id in store.reader().execute(
            f"SELECT app, node_id FROM placements {where} ORDER BY slot", params
        ):
            rows.placements[app].append(node_id)
        for e in store.query("SELECT path, message FROM sync_errors"):
            rows.sync_errors[app_name(e["path"])] = e["message"]
        return rows


def node_statuses(
    store: Store, config: CPConfig, started_at: float, seen: Mapping[str, float] | None
) -> dict[str, str]:
    """Each node's status as the app views use it: a node whose Docker does not
    answer cannot say what runs on it either."""
    now = time.time()
    return {
        r["node_id"]: status_for(now - effective_last_seen(r, started_at, seen), config)
        if r["docker_ok"]
        else NodeStatus.UNKNOWN
        for r in store.reader().execute("SELECT node_id, status, last_seen, docker_ok FROM nodes")
    }


def app_views(
    store: Store,
    config: CPConfig,
    name: str | None = None,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
    *,
    brief: bool = False,
    statuses: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every app (or the one named) as `ps` shows it; `brief` leaves out each app's
    instances and open tasks, which are most of a large cluster's answer.
    `statuses`: `node_statuses` as the caller already read them."""
    where, params = ("WHERE name = ?", (name,)) if name else ("", ())
    apps = store.query(f"SELECT * FROM apps {where} ORDER BY name", params)
    if not apps:
        return []
    node_status = (
        statuses if statuses is not None else node_statuses(store, config, started_at, seen)
    )
    rows = AppRows.read(store, name, brief)
    return [_app_view(app, rows, node_status, brief) for app in apps]


def _app_view(
    app: dict[str, Any], rows: AppRows, node_status: dict[str, str], brief: bool = False
) -> dict[str, Any]:
    name = app["name"]
    rev = rows.revisions.get((name, app["current_revision"]))
    target = rows.revisions.get((name, app["target_revision"])) or rev
    latest = rows.rollouts.get(name)
    live = (
        latest
        if latest
        and not RolloutStatus(latest["status"]).is_terminal
        and app["desired"] == DesiredState.RUNNING
        else None
    )
    spec = json.loads(rev["spec"]) if rev else {}
    open_tasks = rows.tasks.get(name, [])
    failures = [
        f
        for f in rows.failures.get(name, [])
        if f.pop("revision") == app["current_revision"] and not live
    ]
    wanted = {r["container_hash"] for r in (rev, target if live else None) if r}
    containers = rows.containers.get(name, [])
    # What a node that stopped reporting (or whose Docker is down) last said is not
    # what runs now.
    states = [
        c["state"] if node_status.get(c["node_id"]) == NodeStatus.ONLINE else ContainerState.UNKNOWN
        for c in containers
    ]
    replicas = spec.get("replicas", 0)
    running = sum(
        1
        for c, state in zip(containers, states, strict=True)
        if state == ContainerState.RUNNING and c["container_hash"] in wanted
    )
    placements = rows.placements.get(name, [])
    actual = _actual(
        app["desired"],
        Counts(replicas, running, bool(open_tasks), bool(failures)),
        states,
        [node_status.get(n) for n in placements],
    )
    if live:
        status = (
            AppStatus.ROLLING_BACK
            if live["status"] == RolloutStatus.ROLLING_BACK
            else AppStatus.ROLLING_UPDATE
        )
    elif any(t["kind"] == TaskKind.DEPLOY for t in open_tasks):
        status = AppStatus.DEPLOYING
    else:
        status = AppStatus.FAILED if failures else AppStatus.STABLE
    shown = target if live else rev
    held = target["reason"] if target and target["status"] == RevisionStatus.HELD else None
    return {
        "name": name,
        "desired": app["desired"],
        "actual": actual,
        "status": status,
        # While a rollout runs, the revision it rolls out; otherwise the one that runs.
        "revision": f"v{shown['number']}" if shown else None,
        "running_revision": f"v{rev['number']}" if rev else None,
        "target_revision": f"v{target['number']}" if target else None,
        "held": held,
        "rollout": rollout_view(latest),
        "image": spec.get("image"),
        "replicas": replicas,
        "running": running,
        "nodes": sorted(
            {
                c["node_id"]
                for c, state in zip(containers, states, strict=True)
                if state != ContainerState.UNKNOWN
            }
            or set(placements)
        ),
        **({} if brief else {"instances": _instances(containers, states, wanted)}),
        **({} if brief else {"tasks": open_tasks}),
        "errors": failures,
        "last_error": app["last_error"],
        "sync_error": rows.sync_errors.get(name),
        "updated_at": app["updated_at"],
    }


def _failures(store: Store, app: str | None) -> list[dict[str, Any]]:
    """Slots whose latest deploy failed, with Docker's words (the caller picks the revision)."""
    rows = store.query(
        "SELECT t.id, t.app, t.revision, t.slot, t.node_id, t.error, t.finished_at FROM tasks t"
        " JOIN (SELECT MAX(id) AS id FROM tasks WHERE kind = ? AND status != ?"
        + (" AND app = ?" if app else "")
        + " GROUP BY app, slot) m ON m.id = t.id WHERE t.status = ? ORDER BY t.slot",
        (TaskKind.DEPLOY, TaskStatus.CANCELLED, *((app,) if app else ()), TaskStatus.FAILED),
    )
    return [{"task_id": r.pop("id"), **r} for r in rows]


@dataclass(frozen=True)
class Counts:
    replicas: int
    running: int
    tasks_open: bool
    failed: bool


def _instances(
    containers: list[sqlite3.Row], states: list[str], wanted: set[str]
) -> list[dict[str, Any]]:
    return [
        {
            "slot": c["slot"],
            "node_id": c["node_id"],
            "container_id": c["container_id"],
            "container": c["name"],
            "state": state,
            "reported_state": c["state"],
            "health": c["health"],
            "exit_code": c["exit_code"],
            "revision": f"v{c['revision']}" if c["revision"] else None,
            "up_to_date": c["container_hash"] in wanted,
            "image": c["image"],
        }
        for c, state in zip(containers, states, strict=True)
    ]


def _actual(
    desired: str,
    n: Counts,
    states: list[str],
    placement_status: list[str | None],
) -> ActualState:
    """`states`: the app's containers' states (unknown where their node is not online)."""
    if desired == DesiredState.REMOVED:
        return ActualState.REMOVING
    any_up = ContainerState.RUNNING in states
    if desired == DesiredState.STOPPED:
        return ActualState.RUNNING if any_up else ActualState.STOPPED
    if n.replicas and n.running >= n.replicas:
        return ActualState.RUNNING
    if n.running:
        return ActualState.DEGRADED
    if n.failed:
        return ActualState.FAILED
    if placement_status and all(s != NodeStatus.ONLINE for s in placement_status):
        return ActualState.UNKNOWN
    if n.tasks_open:
        return ActualState.PENDING
    if states or not n.replicas:
        return ActualState.STOPPED
    return ActualState.PENDING


def revisions_view(store: Store, app: str) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT number, spec_hash, commit_sha, author, message, status, reason, created_at,"
        " image_digest, spec FROM revisions WHERE app = ? ORDER BY number DESC LIMIT 1000",
        (app,),
    )
    views = []
    for r in rows:
        spec = json.loads(r.pop("spec"))
        views.append({"revision": f"v{r['number']}", **r, "image": spec["image"], "spec": spec})
    return views
