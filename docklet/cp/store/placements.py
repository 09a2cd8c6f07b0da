"""Placements: which node each slot of an app is on, and which revision it runs there.

The only writer of the `placements` table. A slot names a revision only while
a rollout moves it between two; NULL means the app's stable revision.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Sequence

from docklet.cp.store.db import among

Placed = tuple[str, int | None]  # (node, revision; None: the app's stable revision)


def of_apps(db: sqlite3.Connection, apps: Sequence[str] | None) -> dict[str, dict[int, Placed]]:
    """Each app's slots (of `apps`, or all): slot → (node, revision)."""
    only, params = among("app", apps)
    out: dict[str, dict[int, Placed]] = defaultdict(dict)
    for p in db.execute(
        f"SELECT app, slot, node_id, revision FROM placements WHERE {only}", params
    ):
        out[p["app"]][p["slot"]] = (p["node_id"], p["revision"])
    return dict(out)


def per_node(db: sqlite3.Connection) -> Counter[str]:
    """How many slots each node holds, of every app (what spreading weighs)."""
    return Counter(dict(db.execute("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id")))


def place(db: sqlite3.Connection, app: str, slot: int, node_id: str, revision: int | None) -> None:
    """The slot runs `revision` (None: the app's stable one) on `node_id`.

    One rule for every caller: the row becomes exactly what is placed. A slot
    the scheduler moves off a lost node keeps its revision because the
    scheduler places it with the revision it had; a rollout names the one it
    moves the slot to.
    """
    db.execute(
        "INSERT INTO placements (app, slot, node_id, revision) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (app, slot) DO UPDATE SET node_id = excluded.node_id,"
        " revision = excluded.revision",
        (app, slot, node_id, revision),
    )


def drop(db: sqlite3.Connection, app: str, slot: int) -> None:
    db.execute("DELETE FROM placements WHERE app = ? AND slot = ?", (app, slot))
