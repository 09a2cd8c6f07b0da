"""Read models: what the API shows of apps and nodes, desired next to actual."""

from __future__ import annotations

import json
import time
from typing import Any

from docklet.config import CPConfig
from docklet.nodes import status_for
from docklet.status import (
    ActualState,
    AppStatus,
    ContainerState,
    DesiredState,
    NodeStatus,
    TaskKind,
    TaskStatus,
)
from docklet.store import Store


def nodes_view(store: Store, config: CPConfig) -> list[dict[str, Any]]:
    now = time.time()
    counts = dict(
        (r["node_id"], r["n"])
        for r in store.query("SELECT node_id, COUNT(*) AS n FROM containers GROUP BY node_id")
    )
    return [
        {
            "node_id": r["node_id"],
            # Derived from last_seen at read time, so a dead node shows at once.
            "status": status_for(now - r["last_seen"], config),
            "last_seen": r["last_seen"],
            "last_seen_ago": round(now - r["last_seen"], 1),
            "hostname": r["hostname"],
            "engine_id": r["engine_id"],
            "docker_ok": bool(r["docker_ok"]),
            "docker_error": r["docker_error"],
            "containers": counts.get(r["node_id"], 0),
            "registered_at": r["registered_at"],
            "info": json.loads(r["info"]),
        }
        for r in store.query("SELECT * FROM nodes ORDER BY node_id")
    ]


def app_views(store: Store, config: CPConfig, name: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE name = ?", (name,)) if name else ("", ())
    apps = store.query(f"SELECT * FROM apps {where} ORDER BY name", params)
    # A node whose Docker does not answer cannot say what runs on it either.
    node_status = {
        n["node_id"]: n["status"] if n["docker_ok"] else NodeStatus.UNKNOWN
        for n in nodes_view(store, config)
    }
    sync_errors = {
        r["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: r["message"]
        for r in store.query("SELECT path, message FROM sync_errors")
    }
    return [_app_view(store, app, node_status, sync_errors.get(app["name"])) for app in apps]


def _app_view(
    store: Store, app: dict[str, Any], node_status: dict[str, str], sync_error: str | None
) -> dict[str, Any]:
    name = app["name"]
    rev = store.one(
        "SELECT * FROM revisions WHERE app = ? AND number = ?", (name, app["current_revision"])
    )
    spec = json.loads(rev["spec"]) if rev else {}
    containers = store.query(
        "SELECT * FROM containers WHERE app = ? ORDER BY slot, node_id", (name,)
    )
    open_tasks = store.query(
        "SELECT id, kind, slot, node_id, status, revision, attempts FROM tasks"
        " WHERE app = ? AND status IN (?, ?) ORDER BY id",
        (name, TaskStatus.PENDING, TaskStatus.RUNNING),
    )
    failures = _failures(store, name, app["current_revision"])
    instances = [
        {
            "slot": c["slot"],
            "node_id": c["node_id"],
            "container_id": c["container_id"],
            "container": c["name"],
            # What a node that stopped reporting (or whose Docker is down) last
            # said is not what runs now.
            "state": c["state"]
            if node_status.get(c["node_id"]) == NodeStatus.ONLINE
            else ContainerState.UNKNOWN,
            "reported_state": c["state"],
            "health": c["health"],
            "exit_code": c["exit_code"],
            "revision": f"v{c['revision']}" if c["revision"] else None,
            "up_to_date": bool(rev) and c["container_hash"] == rev["container_hash"],
            "image": c["image"],
        }
        for c in containers
    ]
    replicas = spec.get("replicas", 0)
    running = sum(1 for i in instances if i["state"] == ContainerState.RUNNING and i["up_to_date"])
    placements = [
        r["node_id"]
        for r in store.query("SELECT node_id FROM placements WHERE app = ? ORDER BY slot", (name,))
    ]
    actual = _actual(
        app["desired"],
        replicas,
        running,
        instances,
        open_tasks,
        failures,
        [node_status.get(n) for n in placements],
    )
    status = (
        AppStatus.DEPLOYING
        if any(t["kind"] == TaskKind.DEPLOY for t in open_tasks)
        else AppStatus.FAILED
        if failures
        else AppStatus.STABLE
    )
    return {
        "name": name,
        "desired": app["desired"],
        "actual": actual,
        "status": status,
        "revision": f"v{rev['number']}" if rev else None,
        "image": spec.get("image"),
        "replicas": replicas,
        "running": running,
        "nodes": sorted(
            {i["node_id"] for i in instances if i["state"] != ContainerState.UNKNOWN}
            or set(placements)
        ),
        "instances": instances,
        "tasks": open_tasks,
        "errors": failures,
        "last_error": app["last_error"],
        "sync_error": sync_error,
        "updated_at": app["updated_at"],
    }


def _failures(store: Store, app: str, revision: int | None) -> list[dict[str, Any]]:
    """Slots whose latest deploy of the current revision failed, with Docker's words."""
    rows = store.query(
        "SELECT t.id, t.slot, t.node_id, t.error, t.finished_at FROM tasks t"
        " WHERE t.app = ? AND t.kind = ? AND t.revision = ? AND t.id = ("
        "  SELECT MAX(id) FROM tasks u WHERE u.app = t.app AND u.slot = t.slot AND u.kind = t.kind"
        "  AND u.status != ?)"
        " AND t.status = ? ORDER BY t.slot",
        (app, TaskKind.DEPLOY, revision, TaskStatus.CANCELLED, TaskStatus.FAILED),
    )
    return [{"task_id": r.pop("id"), **r} for r in rows]


def _actual(
    desired: str,
    replicas: int,
    running: int,
    instances: list[dict[str, Any]],
    open_tasks: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    placement_status: list[str | None],
) -> ActualState:
    if desired == DesiredState.REMOVED:
        return ActualState.REMOVING
    any_up = any(i["state"] == ContainerState.RUNNING for i in instances)
    if desired == DesiredState.STOPPED:
        return ActualState.RUNNING if any_up else ActualState.STOPPED
    if replicas and running >= replicas:
        return ActualState.RUNNING
    if running:
        return ActualState.DEGRADED
    if failures:
        return ActualState.FAILED
    if placement_status and all(s != NodeStatus.ONLINE for s in placement_status):
        return ActualState.UNKNOWN
    if open_tasks:
        return ActualState.PENDING
    if instances or not replicas:
        return ActualState.STOPPED
    return ActualState.PENDING


def revisions_view(store: Store, app: str) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT number, spec_hash, commit_sha, author, message, status, reason, created_at, spec"
        " FROM revisions WHERE app = ? ORDER BY number DESC",
        (app,),
    )
    return [
        {
            "revision": f"v{r['number']}",
            **{k: v for k, v in r.items() if k != "spec"},
            "spec": json.loads(r["spec"]),
        }
        for r in rows
    ]


def events_view(store: Store, app: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    where, params = ("WHERE app = ?", (app,)) if app else ("", ())
    rows = store.query(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", (*params, limit))
    return rows[::-1]
