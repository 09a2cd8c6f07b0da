"""A draft: one app's decision in progress, the world as this pass has decided it so far.

The scheduler and the rollout controller read the `World` through a draft
and record what they decide in its `plan`; nothing here writes to the store.
Later steps of the same decision see earlier ones (a slot placed by the
rollout controller is where the scheduler finds it), and every slot change
goes through one method, which also keeps the count of slots per node.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Mapping
from typing import Any

from docklet.common.status import EventKind, RevisionStatus
from docklet.cp.reconcile.plan import Cancel, Event, NewTask, Plan, RevisionChange, RolloutChange
from docklet.cp.reconcile.world import Revision, World
from docklet.cp.store.placements import Placed

# A new rollout row's columns that the database would default.
ROLLOUT_DEFAULTS: dict[str, Any] = {
    "id": None,
    "canary_slot": None,
    "canary_node": None,
    "done": 0,
    "reason": None,
    "failed_phase": None,
    "evidence": "{}",
    "recorded": 0,
    "finished_at": None,
}


class Draft:
    """One app's pass: what it reads, and the plan it is writing."""

    def __init__(self, world: World, load: Mapping[str, int], app: sqlite3.Row) -> None:
        self.world, self.app = world, app
        self.name: str = app["name"]
        self.plan = Plan(self.name)
        self.current: int | None = app["current_revision"]
        self._before: Mapping[int, Placed] = world.placements.get(self.name, {})
        self.placements: dict[int, Placed] = dict(self._before)
        live = world.rollouts.get(self.name)
        self.rollout: dict[str, Any] | None = dict(live) if live is not None else None
        self.verified: set[int] = set()  # slots whose new container passed the gate
        self.wake_at = math.inf  # when a health gate's wait ends
        self._open = set(world.open.get(self.name, ()))
        self._revisions: dict[int, Revision] = {}
        self._load = load  # slots per node, every app, as the pass has placed them so far
        self.load_delta: Counter[str] = Counter()  # what this draft changes in it

    # -- slots ----------------------------------------------------------------------

    def put(self, slot: int, node_id: str, revision: int | None) -> None:
        """The slot runs `revision` (None: the app's stable one) on `node_id`."""
        self._set(slot, (node_id, revision))

    def drop(self, slot: int) -> None:
        self._set(slot, None)

    def _set(self, slot: int, placed: Placed | None) -> None:
        """Every slot change: the draft's slots, the plan, and the slots per node."""
        old = self.placements.get(slot)
        if old is not None:
            self.load_delta[old[0]] -= 1
        if placed is None:
            self.placements.pop(slot, None)
        else:
            self.placements[slot] = placed  # an existing slot keeps its place in the order
            self.load_delta[placed[0]] += 1
        if placed == self._before.get(slot):
            self.plan.slots.pop(slot, None)  # back to what the store holds
        else:
            self.plan.slots[slot] = placed

    def load(self, node_id: str) -> int:
        return self._load.get(node_id, 0) + self.load_delta[node_id]

    def place(self, slot: int, spec_of: int, revision: int | None) -> str | None:
        """Put the slot on a node chosen to spread (None: no node may take it).

        Spread: the eligible node with the fewest of this app's slots, then the
        fewest overall. `spec_of`: the revision whose placement rules apply.
        """
        eligible = self.world.eligible(self.revision(spec_of).spec)
        if not eligible:
            return None
        mine = Counter(p[0] for s, p in self.placements.items() if s != slot)
        node_id = min(eligible, key=lambda n: (mine[n], self.load(n), n))
        previous = self.placements.get(slot)
        if previous and previous[0] != node_id:  # work queued for the old node is moot now
            self.cancel(f"slot {slot} moved to {node_id}", slot=slot, node_id=previous[0])
        moved = f" (moved from {previous[0]})" if previous else ""
        self.event(
            EventKind.SLOT_PLACED, f"app {self.name}: slot {slot} on {node_id}{moved}", node_id
        )
        self.put(slot, node_id, revision)
        return node_id

    # -- tasks and events ---------------------------------------------------------------

    def is_open(self, node_id: str, container: str) -> bool:
        """Whether a task for this container is queued or leased (or queued by this draft)."""
        return (node_id, container) in self._open

    def queue(self, task: NewTask) -> None:
        self.plan.tasks.append(task)
        self._open.add((task.node_id, task.container))

    def cancel(self, reason: str, **narrowed: Any) -> None:
        self.plan.cancels.append(Cancel(reason, **narrowed))

    def event(self, kind: EventKind, message: str, node_id: str | None = None) -> None:
        self.plan.events.append(Event(kind, message, node_id))

    def set_error(self, message: str | None) -> None:
        """What the app shows as its problem (None: none); an event when there is a new one."""
        if self.app["last_error"] != message:
            self.plan.last_error = message
            if message:
                self.event(EventKind.APP_UNSCHEDULABLE, f"app {self.name}: {message}")

    # -- revisions ------------------------------------------------------------------------

    def revision(self, number: int) -> Revision:
        """The app's revision `number`, its spec parsed (once per draft: asked once a slot)."""
        rev = self._revisions.get(number)
        if rev is None:
            rev = self._revisions[number] = self.world.revision(self.name, number)
        return rev

    def status(self, number: int | None) -> str | None:
        """A revision's status as this draft leaves it."""
        if number is None:
            return None
        change = self.plan.revisions.get(number)
        return change.status if change else self.world.revision_row(self.name, number)["status"]

    def set_status(self, number: int, status: RevisionStatus, reason: str | None = None) -> None:
        self.plan.revisions[number] = RevisionChange(status, reason)

    def set_current(self, number: int) -> None:
        self.current = number
        self.plan.current_revision = number

    def statuses(self, stored: Mapping[int, str]) -> set[str]:
        """The statuses of these revisions (number → stored status) as this draft leaves them."""
        return {self.status(n) if n in self.plan.revisions else s for n, s in stored.items()}

    # -- the rollout ----------------------------------------------------------------------

    def start_rollout(self, fields: dict[str, Any], note: str) -> dict[str, Any]:
        """A new rollout with these columns; returns its row as the draft sees it."""
        change = RolloutChange(None, fields["revision"], fields["from_revision"], dict(fields))
        change.notes.append(note)
        self.plan.rollouts.append(change)
        self.rollout = {**ROLLOUT_DEFAULTS, **fields}
        return self.rollout

    def update_rollout(self, r: dict[str, Any], note: str = "", **fields: Any) -> dict[str, Any]:
        """Set these columns of rollout `r` (and its `updated_at`); returns its new row."""
        fields["updated_at"] = self.world.now
        change = next((c for c in self.plan.rollouts if c.id == r["id"]), None)
        if change is None:
            change = RolloutChange(r["id"], r["revision"], r["from_revision"])
            self.plan.rollouts.append(change)
        change.fields.update(fields)
        if note:
            change.notes.append(note)
        self.rollout = {**r, **fields}
        return self.rollout
