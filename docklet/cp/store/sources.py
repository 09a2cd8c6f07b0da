"""What a log request (`docklet logs`) reads: an app, its placements and its containers.

Reads only, one statement each: the tables' writers are `apps`, `placements` and
`nodes`. The containers are as agents last reported them, kept (stopped) ones too:
a rollback keeps the old revision's containers, which is where `--revision` looks.
"""

from __future__ import annotations

from typing import Any

from docklet.cp.store.db import Store


def app(store: Store, name: str) -> dict[str, Any] | None:
    """The app's row (its current revision), or None."""
    return store.one("SELECT name, current_revision FROM apps WHERE name = ?", (name,))


def revision_exists(store: Store, name: str, number: int) -> bool:
    found = store.one("SELECT 1 AS ok FROM revisions WHERE app = ? AND number = ?", (name, number))
    return found is not None


def placements(store: Store, name: str) -> list[dict[str, Any]]:
    """The app's slots: slot, node and revision (None: the app's stable one), by slot."""
    return store.query(
        "SELECT slot, node_id, revision FROM placements WHERE app = ? ORDER BY slot", (name,)
    )


def containers(store: Store, name: str) -> list[dict[str, Any]]:
    """The app's containers on every node, by slot then node."""
    return store.query(
        "SELECT node_id, name, slot, revision, state FROM containers WHERE app = ?"
        " ORDER BY slot, node_id, name",
        (name,),
    )
