"""What the API's read models read: named queries, each one statement, no writes.

The writers of these tables are elsewhere (one module per table); this module
only reads, so a view reads every table it needs in one query per table
rather than one per app. `name` limits a query to one app; None reads all.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from docklet.common.status import RevisionStatus, TaskKind, TaskStatus
from docklet.cp.store.db import Store
from docklet.cp.store.tasks import OPEN


def _only(name: str | None, column: str = "app") -> tuple[str, tuple[str, ...]]:
    return (f"WHERE {column} = ?", (name,)) if name else ("", ())


def ping(store: Store) -> bool:
    """Whether the database answers a query."""
    return store.one("SELECT 1 AS ok") is not None


# -- nodes ---------------------------------------------------------------------------


def nodes(store: Store) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM nodes ORDER BY node_id")


def node_liveness(store: Store) -> sqlite3.Cursor:
    """What a node's status is worked out from, for every node."""
    return store.reader().execute("SELECT node_id, status, last_seen, docker_ok FROM nodes")


def containers_per_node(store: Store) -> dict[str, int]:
    rows = store.query("SELECT node_id, COUNT(*) AS n FROM containers GROUP BY node_id")
    return {r["node_id"]: r["n"] for r in rows}


# -- apps, as `ps` shows them ----------------------------------------------------------


def apps(store: Store, name: str | None) -> list[dict[str, Any]]:
    where, params = _only(name, "name")
    return store.query(f"SELECT * FROM apps {where} ORDER BY name", params)


def revisions_in_use(store: Store, name: str | None) -> list[dict[str, Any]]:
    """Each app's current and target revisions."""
    return store.query(
        "SELECT r.* FROM revisions r JOIN apps a"
        " ON a.name = r.app AND r.number IN (a.current_revision, a.target_revision)"
        + (" WHERE a.name = ?" if name else ""),
        _only(name)[1],
    )


def latest_rollouts(store: Store, name: str | None) -> list[dict[str, Any]]:
    """Each app's newest rollout, whatever its status."""
    return store.query(
        "SELECT * FROM rollouts WHERE id IN (SELECT MAX(id) FROM rollouts"
        + (" WHERE app = ?" if name else "")
        + " GROUP BY app)",
        _only(name)[1],
    )


def containers(store: Store, name: str | None, brief: bool) -> sqlite3.Cursor:
    """The columns a view shows, as rows (not dicts: ten thousand of them in a `ps`);
    `brief`: only what a brief view shows (not each one's details). App first."""
    where, params = _only(name)
    columns = (
        "app, node_id, state, container_hash"
        if brief
        else "app, slot, node_id, container_id, name, state, health, exit_code, revision,"
        " container_hash, image"
    )
    order = "" if brief else "ORDER BY slot, node_id"
    return store.reader().execute(f"SELECT {columns} FROM containers {where} {order}", params)


def open_tasks(store: Store, name: str | None) -> list[dict[str, Any]]:
    where, params = _only(name)
    return store.query(
        "SELECT id, app, kind, slot, node_id, status, revision, attempts FROM tasks"
        f" {where or 'WHERE 1'} AND {OPEN} ORDER BY id",
        params,
    )


def failed_deploys(store: Store, name: str | None) -> list[dict[str, Any]]:
    """Slots whose latest deploy failed, with Docker's words (the caller picks the revision)."""
    rows = store.query(
        "SELECT t.id, t.app, t.revision, t.slot, t.node_id, t.error, t.finished_at FROM tasks t"
        " JOIN (SELECT MAX(id) AS id FROM tasks WHERE kind = ? AND status != ?"
        + (" AND app = ?" if name else "")
        + " GROUP BY app, slot) m ON m.id = t.id WHERE t.status = ? ORDER BY t.slot",
        (TaskKind.DEPLOY, TaskStatus.CANCELLED, *_only(name)[1], TaskStatus.FAILED),
    )
    return [{"task_id": r.pop("id"), **r} for r in rows]


def placed_nodes(store: Store, name: str | None) -> sqlite3.Cursor:
    """(app, node_id) of every slot, in slot order."""
    where, params = _only(name)
    return store.reader().execute(
        f"SELECT app, node_id FROM placements {where} ORDER BY slot", params
    )


def sync_errors(store: Store, *, by_path: bool = True) -> list[dict[str, Any]]:
    """The spec files the last sync refused, and why (in the table's order unless `by_path`)."""
    order = " ORDER BY path" if by_path else ""
    return store.query(f"SELECT path, message FROM sync_errors{order}")


# -- one app's history -----------------------------------------------------------------


def revision_history(store: Store, app: str) -> list[dict[str, Any]]:
    """The app's revisions, newest first, with their specs."""
    return store.query(
        "SELECT number, spec_hash, commit_sha, author, message, status, reason, created_at,"
        " image_digest, spec FROM revisions WHERE app = ? ORDER BY number DESC LIMIT 1000",
        (app,),
    )


def revision(store: Store, app: str, number: int) -> dict[str, Any] | None:
    return store.one("SELECT * FROM revisions WHERE app = ? AND number = ?", (app, number))


def rollback_target(store: Store, app: str) -> dict[str, Any] | None:
    """The revision a rollback with no target goes to: the stable revision itself while
    another is being (or failed to be) rolled out; otherwise the one that ran before it."""
    return store.one(
        "SELECT r.* FROM revisions r JOIN apps a ON a.name = r.app WHERE r.app = ?"
        " AND (r.number < a.current_revision OR (r.number = a.current_revision"
        " AND a.target_revision != a.current_revision)) AND r.status IN (?, ?)"
        " ORDER BY r.number DESC LIMIT 1",
        (app, RevisionStatus.STABLE, RevisionStatus.REPLACED),
    )


def rollouts(store: Store, app: str) -> list[dict[str, Any]]:
    """The app's latest hundred rollouts, newest first."""
    return store.query("SELECT * FROM rollouts WHERE app = ? ORDER BY id DESC LIMIT 100", (app,))


def rollout(store: Store, app: str, rollout_id: int) -> dict[str, Any] | None:
    return store.one("SELECT * FROM rollouts WHERE app = ? AND id = ?", (app, rollout_id))
