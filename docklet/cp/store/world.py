"""What a reconcile pass reads of the node-facing tables (nodes, containers).

Reads only: `docklet.cp.store.nodes` writes these tables.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence

from docklet.cp.store.db import among


def nodes(db: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """Every node, by id."""
    return {r["node_id"]: r for r in db.execute("SELECT * FROM nodes")}


def containers(db: sqlite3.Connection, apps: Sequence[str]) -> dict[str, list[sqlite3.Row]]:
    """The containers of `apps` as agents last reported them, by app (by slot, then node)."""
    only, params = among("app", apps)
    out: dict[str, list[sqlite3.Row]] = defaultdict(list)
    for c in db.execute(
        f"SELECT * FROM containers WHERE {only} ORDER BY app, slot, node_id", params
    ):
        out[c["app"]].append(c)
    return dict(out)


def orphans(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Containers labelled for apps this CP does not know (removed while a node was away)."""
    return db.execute(
        "SELECT c.node_id, c.name, c.app, c.slot FROM containers c"
        " LEFT JOIN apps a ON a.name = c.app WHERE a.name IS NULL"
    ).fetchall()
