"""One app as the API shows it, desired next to actual: a pure builder over rows already read.

`app_view(app, rows, node_status)` is the dict `GET /api/state/apps` answers
for the app, from its row, what `AppRows` holds for every app (read in one
query per table, see views.py) and each node's status. It reads nothing.
"""

from __future__ import annotations

import json
import sqlite3
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
)
from docklet.cp.reconcile.rollout import view as rollout_view

Row = Mapping[str, Any] | sqlite3.Row


@dataclass
class AppRows:
    """Everything the app views read, by app."""

    revisions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # the latest, per app
    containers: dict[str, list[Row]] = field(default_factory=lambda: defaultdict(list))
    tasks: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    placements: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    sync_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Counts:
    replicas: int
    running: int
    tasks_open: bool
    failed: bool


def app_view(
    app: Mapping[str, Any], rows: AppRows, node_status: Mapping[str, str], brief: bool = False
) -> dict[str, Any]:
    """The app as `ps` shows it; `brief` leaves out its instances and open tasks."""
    name = app["name"]
    rev = rows.revisions.get((name, app["current_revision"]))
    target = rows.revisions.get((name, app["target_revision"])) or rev
    latest = rows.rollouts.get(name)
    live = _live(latest, app["desired"])
    spec = json.loads(rev["spec"]) if rev else {}
    open_tasks = rows.tasks.get(name, [])
    failures = _failures(rows.failures.get(name, []), app["current_revision"], live)
    wanted = {r["container_hash"] for r in (rev, target if live else None) if r}
    containers = rows.containers.get(name, [])
    states = _states(containers, node_status)
    replicas = spec.get("replicas", 0)
    running = sum(
        1
        for c, state in zip(containers, states, strict=True)
        if state == ContainerState.RUNNING and c["container_hash"] in wanted
    )
    placements = rows.placements.get(name, [])
    counts = Counts(replicas, running, bool(open_tasks), bool(failures))
    shown = target if live else rev
    return {
        "name": name,
        "desired": app["desired"],
        "actual": _actual(app["desired"], counts, states, [node_status.get(n) for n in placements]),
        "status": _status(live, open_tasks, failures),
        # While a rollout runs, the revision it rolls out; otherwise the one that runs.
        "revision": _numbered(shown),
        "running_revision": _numbered(rev),
        "target_revision": _numbered(target),
        "held": target["reason"] if target and target["status"] == RevisionStatus.HELD else None,
        "rollout": rollout_view(latest),
        "image": spec.get("image"),
        "replicas": replicas,
        "running": running,
        "nodes": _nodes(containers, states, placements),
        **({} if brief else {"instances": _instances(containers, states, wanted)}),
        **({} if brief else {"tasks": open_tasks}),
        "errors": failures,
        "last_error": app["last_error"],
        "sync_error": rows.sync_errors.get(name),
        "updated_at": app["updated_at"],
    }


def _live(latest: dict[str, Any] | None, desired: str) -> dict[str, Any] | None:
    """The app's rollout, while one runs (a stopped app's rollout waits)."""
    if (
        latest
        and not RolloutStatus(latest["status"]).is_terminal
        and desired == DesiredState.RUNNING
    ):
        return latest
    return None


def _failures(
    failed: list[dict[str, Any]], current: int | None, live: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The running revision's failed slots; none while a rollout runs (it says how it goes)."""
    if live:
        return []
    return [
        {k: v for k, v in f.items() if k != "revision"} for f in failed if f["revision"] == current
    ]


def _states(containers: list[Row], node_status: Mapping[str, str]) -> list[str]:
    """What a node that stopped reporting (or whose Docker is down) last said is not
    what runs now."""
    return [
        c["state"] if node_status.get(c["node_id"]) == NodeStatus.ONLINE else ContainerState.UNKNOWN
        for c in containers
    ]


def _status(
    live: dict[str, Any] | None, open_tasks: list[dict[str, Any]], failures: list[dict[str, Any]]
) -> AppStatus:
    if live:
        if live["status"] == RolloutStatus.ROLLING_BACK:
            return AppStatus.ROLLING_BACK
        return AppStatus.ROLLING_UPDATE
    if any(t["kind"] == TaskKind.DEPLOY for t in open_tasks):
        return AppStatus.DEPLOYING
    return AppStatus.FAILED if failures else AppStatus.STABLE


def _numbered(revision: Mapping[str, Any] | None) -> str | None:
    return f"v{revision['number']}" if revision else None


def _nodes(containers: list[Row], states: list[str], placements: list[str]) -> list[str]:
    """Where the app's containers are known to be; where its slots are placed otherwise."""
    known = {
        c["node_id"]
        for c, state in zip(containers, states, strict=True)
        if state != ContainerState.UNKNOWN
    }
    return sorted(known or set(placements))


def _instances(containers: list[Row], states: list[str], wanted: set[str]) -> list[dict[str, Any]]:
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
