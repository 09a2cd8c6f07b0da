"""Read models: what the API shows of apps, nodes, revisions, rollouts and the CP itself.

`Views` serves the GET routes. Liveness is as this process knows it: from its
start (or its latest 503) and the heartbeats it keeps in memory. The module's
functions read through the store's named queries (store/views.py) and shape
with pure builders (appview.py for apps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from docklet.common.errors import NotFound
from docklet.common.status import NodeStatus
from docklet.cp.desired.edits import app_name
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.reconcile import rollout
from docklet.cp.service.appview import AppRows, app_view
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.polls import Polls
from docklet.cp.settings import CPConfig
from docklet.cp.store import events
from docklet.cp.store import views as stored
from docklet.cp.store.db import Store, get_meta
from docklet.cp.store.nodes import effective_last_seen, last_seen, status_for


class Views:
    """The GET routes' answers."""

    def __init__(
        self, store: Store, repo: GitRepo, config: CPConfig, liveness: Liveness, polls: Polls
    ) -> None:
        self.store, self.repo, self.config = store, repo, config
        self.liveness, self.polls = liveness, polls
        # The list of every app, by brief or not: (store version, node statuses, views).
        self._cache: dict[bool, tuple[int, dict[str, str], list[dict[str, Any]]]] = {}

    def apps(self, brief: bool = False) -> list[dict[str, Any]]:
        """Every app's view.

        The list is kept while nothing it was made from changed: no write moved
        the store's version, and every node's status is as it was. (A thousand
        agents' `ps` every few seconds each would otherwise rebuild it from ten
        thousand containers every time.)
        """
        deaf, seen = self.liveness.deaf_until(), self.liveness.last_seen()
        version = self.store.version  # before reading: a write meanwhile makes this stale
        statuses = node_statuses(self.store, self.config, deaf, seen)
        cached = self._cache.get(brief)
        if cached is not None and cached[0] == version and cached[1] == statuses:
            return cached[2]
        views = app_views(self.store, self.config, None, deaf, seen, brief=brief, statuses=statuses)
        self._cache[brief] = (version, statuses, views)
        return views

    def find(self, name: str) -> dict[str, Any] | None:
        """The app's view, or None (a removed app with nothing left to clean up is gone)."""
        deaf, seen = self.liveness.deaf_until(), self.liveness.last_seen()
        views = app_views(self.store, self.config, name, deaf, seen)
        return views[0] if views else None

    def app(self, name: str) -> dict[str, Any]:
        view = self.find(name)
        if view is None:
            raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
        return view

    def nodes(self) -> list[dict[str, Any]]:
        deaf, seen = self.liveness.deaf_until(), self.liveness.last_seen()
        return nodes_view(self.store, self.config, deaf, seen)

    def revisions(self, name: str) -> list[dict[str, Any]]:
        self.app(name)
        return revisions_view(self.store, name)

    def rollouts(self, name: str) -> list[dict[str, Any]]:
        self.app(name)
        return [v for v in map(rollout.view, stored.rollouts(self.store, name)) if v]

    def rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        row = stored.rollout(self.store, name, rollout_id) if 0 < rollout_id < 2**63 else None
        if row is None:
            raise NotFound(f"app {name!r} has no rollout {rollout_id}")
        return rollout.view(row) or {}

    def events(self, app: str | None, limit: int) -> list[dict[str, Any]]:
        return events.recent(self.store, app, limit)

    def sync_state(self) -> dict[str, Any]:
        synced = get_meta(self.store.reader(), "synced_commit")
        errors = stored.sync_errors(self.store)
        return {"head": self.repo.head(), "synced": synced, "errors": errors}

    def healthy(self) -> bool:
        return stored.ping(self.store)

    def metrics(self) -> dict[str, Any]:
        """Load figures with no secret in them: what benchmarks and operators watch."""
        overload = self.liveness.overload
        return {
            "long_polls": self.polls.waiting(),
            "long_poll_slots": self.config.long_poll_slots,
            "longest_write_ms": round(self.store.longest_write * 1000, 3),
            "slow_writes": [
                {"at": round(at, 3), "ms": round(took * 1000, 1), "in": where}
                for at, took, where in list(self.store.slow_writes)
            ],
            "overloaded": overload.refused if overload is not None else 0,
        }


def nodes_view(
    store: Store,
    config: CPConfig,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Every node; `seen` holds heartbeats kept in memory, newer than the stored ones."""
    now = time.time()
    counts = stored.containers_per_node(store)
    views = []
    for r in stored.nodes(store):
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
        for r in stored.node_liveness(store)
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
    apps = stored.apps(store, name)
    if not apps:
        return []
    node_status = (
        statuses if statuses is not None else node_statuses(store, config, started_at, seen)
    )
    rows = read_rows(store, name, brief)
    return [app_view(app, rows, node_status, brief) for app in apps]


def read_rows(store: Store, name: str | None, brief: bool = False) -> AppRows:
    """What the app views show of every app (or the one named), one query per table.
    `brief`: only what a brief view shows of containers (not each one's details)."""
    rows = AppRows()
    for r in stored.revisions_in_use(store, name):
        rows.revisions[(r["app"], r["number"])] = r
    for r in stored.latest_rollouts(store, name):
        rows.rollouts[r["app"]] = r
    for c in stored.containers(store, name, brief):
        rows.containers[c[0]].append(c)
    for t in stored.open_tasks(store, name):
        rows.tasks[t.pop("app")].append(t)
    for f in stored.failed_deploys(store, name):
        rows.failures[f.pop("app")].append(f)
    for app, node_id in stored.placed_nodes(store, name):
        rows.placements[app].append(node_id)
    for e in stored.sync_errors(store, by_path=False):
        rows.sync_errors[app_name(e["path"])] = e["message"]
    return rows


def revisions_view(store: Store, app: str) -> list[dict[str, Any]]:
    views = []
    for r in stored.revision_history(store, app):
        spec = json.loads(r.pop("spec"))
        views.append({"revision": f"v{r['number']}", **r, "image": spec["image"], "spec": spec})
    return views
