"""What a reconcile pass knows: a read-only view of the store, read once per chunk of apps.

The scheduler and the rollout controller decide from a `World` and write
nothing: what they decide is a `Plan` (plan.py), applied in one place. A
pass reads what it needs once, not once per app or container, so it costs
O(apps + containers) of the apps it looks at.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from docklet.common.status import NodeStatus
from docklet.cp.desired.spec import AppSpec
from docklet.cp.settings import CPConfig
from docklet.cp.store import placements, revisions, rollouts, tasks
from docklet.cp.store import world as reads
from docklet.cp.store.placements import Placed

Row = sqlite3.Row
Open = Mapping[tuple[str, str], Any]  # (node, container) → open task

SPEC_CACHE_SIZE = 4096
_specs: dict[str, AppSpec] = {}  # parsed specs by spec hash, shared by every pass


@dataclass
class Revision:
    """A revision with its spec parsed."""

    number: int
    container_hash: str
    spec: AppSpec
    image: str  # what deploys run: the digest the first deploy pinned, else the spec's image

    @classmethod
    def of(cls, row: Row) -> Revision:
        # Parsed once per revision, not once per pass: the spec hash names its content.
        spec = _specs.get(row["spec_hash"])
        if spec is None:
            if len(_specs) >= SPEC_CACHE_SIZE:
                _specs.clear()
            spec = _specs[row["spec_hash"]] = AppSpec.model_validate(json.loads(row["spec"]))
        digest = row["image_digest"] or ""
        # An image id (no registry digest) names bytes on one node only: other nodes use the tag.
        image = digest if "@sha256:" in digest else spec.image
        return cls(row["number"], row["container_hash"], spec, image)


@dataclass(frozen=True)
class History:
    """Older revisions' statuses, read only when a rollout asks (a start, a canary, a
    promotion step), never by a pass that has no rollout to decide."""

    db: sqlite3.Connection

    def by_runtime(self, app: str, runtime_hash: str) -> dict[int, str]:
        return revisions.statuses_by_runtime(self.db, app, runtime_hash)

    def by_container(self, app: str, container_hash: str) -> dict[int, str]:
        return revisions.statuses_by_container(self.db, app, container_hash)


@dataclass(frozen=True)
class World:
    """The state one chunk of a pass decides from, read at its start. Never written."""

    config: CPConfig
    now: float
    nodes: Mapping[str, Row]
    containers: Mapping[str, Sequence[Row]]  # by app
    open: Mapping[str, Open]  # open tasks, by app
    latest: Mapping[tuple[str, str], Row]  # the newest task per (node, container)
    placements: Mapping[str, Mapping[int, Placed]]  # by app, then slot
    revisions: Mapping[tuple[str, int], Row]  # those a pass can touch (revisions.in_play)
    rollouts: Mapping[str, Row]  # live rollouts, by app
    history: History

    @classmethod
    def read(
        cls,
        db: sqlite3.Connection,
        config: CPConfig,
        now: float,
        apps: Sequence[str],
        nodes: Mapping[str, Row],
    ) -> World:
        """What a pass needs of `apps`; `nodes` are read once a pass, not once a chunk."""
        return cls(
            config=config,
            now=now,
            nodes=nodes,
            containers=reads.containers(db, apps),
            open=tasks.open_tasks(db, apps),
            latest=tasks.latest_per_container(db, apps),
            placements=placements.of_apps(db, apps),
            revisions=revisions.in_play(db, apps),
            rollouts=rollouts.live(db, apps),
            history=History(db),
        )

    @cached_property
    def _by_name(self) -> dict[tuple[str, str], Row]:
        return {(c["node_id"], c["name"]): c for rows in self.containers.values() for c in rows}

    def container(self, node_id: str, name: str) -> Row | None:
        """The container of that name on that node, as last reported (an index, built once)."""
        return self._by_name.get((node_id, name))

    def reachable(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node["status"] != NodeStatus.OFFLINE

    def revision_row(self, app: str, number: int) -> Row:
        return self.revisions[(app, number)]

    def revision(self, app: str, number: int) -> Revision:
        return Revision.of(self.revisions[(app, number)])

    def eligible(self, spec: AppSpec) -> list[str]:
        """The nodes that may take a slot of this spec now."""
        return [
            n
            for n, row in self.nodes.items()
            if row["status"] == NodeStatus.ONLINE
            and row["docker_ok"]
            and (not spec.placement.nodes or n in spec.placement.nodes)
        ]
