"""A plan: what a reconcile pass decided for one app, and the one place it is applied.

The scheduler and the rollout controller read a `World` and return a `Plan`;
`apply_plan` writes it inside the pass's write transaction, through each
table's own writer. (Nomad's scheduler submits a plan the same way, and
one place applies it.) A plan holds values only, so a test can compare the
plan for a given state with the exact plan it expects.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from docklet.common import logs
from docklet.common.status import EventKind, RevisionStatus, TaskKind
from docklet.cp.store import apps, events, placements, revisions, rollouts, tasks
from docklet.cp.store.placements import Placed


class Keep(Enum):
    """A field the plan leaves as it is (where None is a value: "no error")."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class NewTask:
    """A task to queue for a node's agent."""

    kind: TaskKind
    node_id: str
    container: str
    slot: int | None
    revision: int | None = None
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Cancel:
    """The app's queued (not yet leased) tasks that no longer match, narrowed by kind,
    slot and node when given."""

    reason: str
    kind: TaskKind | None = None
    slot: int | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: str
    node_id: str | None = None


@dataclass(frozen=True)
class RevisionChange:
    status: RevisionStatus
    reason: str | None = None


@dataclass
class RolloutChange:
    """A rollout to start (`id` None) or to update: the columns it sets, and what
    happened to it, in order (each an event naming the rollout)."""

    id: int | None
    revision: int
    from_revision: int
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """Every write one app's pass makes, applied in this order."""

    app: str
    cancels: list[Cancel] = field(default_factory=list)
    revisions: dict[int, RevisionChange] = field(default_factory=dict)  # by number
    rollouts: list[RolloutChange] = field(default_factory=list)
    current_revision: int | None = None  # None: unchanged
    slots: dict[int, Placed | None] = field(default_factory=dict)  # changed slots; None: dropped
    last_error: str | Keep | None = KEEP
    events: list[Event] = field(default_factory=list)
    tasks: list[NewTask] = field(default_factory=list)
    forget: bool = False  # gone from the repository and from every node: drop its records


def apply_plan(db: sqlite3.Connection, plan: Plan) -> None:
    """Write `plan`. Queued work is cancelled before new work is queued, so a
    cancel never catches a task of the same plan."""
    app = plan.app
    for c in plan.cancels:
        tasks.cancel_pending(db, app, c.reason, kind=c.kind, slot=c.slot, node_id=c.node_id)
    for number, change in plan.revisions.items():
        revisions.set_status(db, app, number, change.status, change.reason)
    for change in plan.rollouts:
        _apply_rollout(db, app, change)
    if plan.current_revision is not None:
        apps.set_current(db, app, plan.current_revision)
    for slot, placed in plan.slots.items():
        if placed is None:
            placements.drop(db, app, slot)
        else:
            placements.place(db, app, slot, *placed)
    if plan.last_error is not KEEP:
        apps.set_error(db, app, plan.last_error)
    for e in plan.events:
        events.record(db, e.kind, e.message, app=app, node_id=e.node_id)
    for t in plan.tasks:
        tasks.create(
            db,
            node_id=t.node_id,
            app=app,
            kind=t.kind,
            container=t.container,
            slot=t.slot,
            revision=t.revision,
            payload=dict(t.payload) if t.payload is not None else None,
        )
    if plan.forget:
        apps.forget(db, app)
        tasks.forget_app(db, app)


def _apply_rollout(db: sqlite3.Connection, app: str, change: RolloutChange) -> None:
    if change.id is None:
        rollout_id = rollouts.start(db, change.fields)
    else:
        rollout_id = change.id
        rollouts.update(db, rollout_id, change.fields)
    subject = f"app {app}: rollout {rollout_id} v{change.from_revision}→v{change.revision}"
    with logs.context(rollout=rollout_id, revision=change.revision):  # its log lines say so
        for note in change.notes:
            events.record(db, EventKind.ROLLOUT, f"{subject}: {note}", app=app)
