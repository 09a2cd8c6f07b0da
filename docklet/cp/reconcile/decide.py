"""Deciding one app: desired state and agents' reports in, a plan and an outcome out.

What should run is the current revision's replicas, each in a slot placed on
a node (a rollout moves slots between two revisions first); what runs is what
agents last reported. The decision queues the tasks that close the gap. It
is idempotent: a slot with an open task is left alone, so deciding twice from
the same state queues nothing twice. It reads a `World` and writes nothing.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from docklet.common.status import (
    ContainerState,
    DesiredState,
    EventKind,
    TaskKind,
    TaskStatus,
)
from docklet.common.units import parse_port
from docklet.cp.desired.spec import AppSpec, RolloutOrder
from docklet.cp.reconcile.draft import Draft
from docklet.cp.reconcile.plan import NewTask, Plan
from docklet.cp.reconcile.rollout import Controller, Rollout
from docklet.cp.reconcile.world import Revision, World
from docklet.cp.store.tasks import container_name

Row = sqlite3.Row


class Convergence(StrEnum):
    CONVERGED = "converged"  # runs as it should; nothing in flight, no clock running
    BUSY = "busy"  # work in flight or a clock running: the next pass looks again
    FAILED = "failed"  # could not be decided or applied: the next pass looks again


@dataclass(frozen=True)
class Outcome:
    """What a pass made of one app, and why it is not converged yet."""

    app: str
    state: Convergence
    reason: str = ""
    queued: int = 0
    wake_at: float = math.inf  # when a health gate's wait ends (time.time())


@dataclass(frozen=True)
class Decision:
    plan: Plan
    outcome: Outcome
    load_delta: Mapping[str, int]  # slots per node this plan adds (or, negative, frees)


def decide(world: World, load: Mapping[str, int], app: Row) -> Decision:
    """What to write for `app`, and its outcome. `load`: slots per node, every app, as
    the pass has placed them so far (for spreading)."""
    draft = Draft(world, load, app)
    if app["desired"] == DesiredState.RUNNING and app["current_revision"] is not None:
        draft.cancel("app is running again", kind=TaskKind.STOP)
        live = Controller(draft).advance()
        _converge(draft, live)
    else:
        draft.cancel(f"app is {app['desired']}", kind=TaskKind.DEPLOY)
        if app["desired"] == DesiredState.STOPPED:
            if app["current_revision"] is not None:
                Controller(draft).advance()  # a new revision of a stopped app takes over
            _for_each(draft, TaskKind.STOP, only_running=True)
        else:
            _remove(draft)
    delta = {node_id: n for node_id, n in draft.load_delta.items() if n}
    return Decision(draft.plan, _outcome(draft), delta)


def failed(world: World, app: Row, reason: str) -> Plan:
    """The plan for an app that could not be decided: it says why."""
    draft = Draft(world, {}, app)
    draft.set_error(reason)
    return draft.plan


# -- running: each slot runs its revision on its node; everything else of the app goes


def _converge(draft: Draft, live: Rollout | None) -> None:
    current = draft.current
    if current is None:  # a running app keeps a current revision; a rollout never unsets it
        raise ValueError(f"app {draft.name}: running, with no current revision")
    stable = draft.revision(current)
    slots = set(range(1, stable.spec.replicas + 1)) | {
        s for s, p in draft.placements.items() if p[1] is not None
    }
    targets, unplaced = _deploy(draft, sorted(slots), current, live)
    draft.set_error(_unplaced_reason(stable.spec) if unplaced else None)
    for slot in [s for s in draft.placements if s not in slots]:
        draft.drop(slot)
    _clear(draft, targets, live)


def _deploy(
    draft: Draft, slots: Sequence[int], current: int, live: Rollout | None
) -> tuple[dict[int, tuple[str, str]], bool]:
    """Place each slot and deploy what it should run where it does not run yet.

    Returns each placed slot's (node, container name), and whether a slot found no node.
    """
    targets: dict[int, tuple[str, str]] = {}
    unplaced = False
    for slot in slots:
        placed = draft.placements.get(slot)
        rev = draft.revision((placed[1] if placed else None) or current)
        node_id = _node_for(draft, slot, rev)
        if node_id is None:
            unplaced = True
            continue
        cname = container_name(draft.name, slot, rev.container_hash)
        targets[slot] = (node_id, cname)
        if draft.is_open(node_id, cname):
            continue
        if _needs_deploy(draft, rev, node_id, cname, rolling=live is not None):
            containers = draft.world.containers.get(draft.name, [])
            replaces = _replaces(rev, slot, node_id, cname, containers)
            payload = deploy_payload(rev, replaces)
            draft.queue(NewTask(TaskKind.DEPLOY, node_id, cname, slot, rev.number, payload))
    return targets, unplaced


def _clear(draft: Draft, targets: Mapping[int, tuple[str, str]], live: Rollout | None) -> None:
    """Remove the app's containers that no slot runs; stop those a rollout keeps."""
    kept = _kept_hashes(draft, live)
    for c in draft.world.containers.get(draft.name, []):
        if draft.is_open(c["node_id"], c["name"]) or targets.get(c["slot"]) == (
            c["node_id"],
            c["name"],
        ):
            continue
        if c["container_hash"] in kept and c["slot"] in targets:
            # A rollout keeps the old revision's container (a rollback restarts it);
            # once its slot's new container passed the gate it is stopped, not removed.
            if c["slot"] in draft.verified and ContainerState.is_live(c["state"]):
                kind = TaskKind.STOP
            else:
                continue
        else:
            kind = TaskKind.REMOVE
        draft.queue(NewTask(kind, c["node_id"], c["name"], c["slot"]))


def _node_for(draft: Draft, slot: int, rev: Revision) -> str | None:
    """The slot's node; a slot leaves it only when it is gone or no longer allowed."""
    placed = draft.placements.get(slot)
    number = None
    if placed is not None:
        node_id, number = placed
        allowed = not rev.spec.placement.nodes or node_id in rev.spec.placement.nodes
        if draft.world.reachable(node_id) and allowed:
            return node_id
    return draft.place(slot, rev.number, number)  # moved, it runs what it ran


def _kept_hashes(draft: Draft, live: Rollout | None) -> set[str]:
    if live is None:
        return set()
    return {
        draft.world.revisions[(draft.name, n)]["container_hash"]
        for n in (live["revision"], live["from_revision"])
        if (draft.name, n) in draft.world.revisions
    }


def _replaces(
    rev: Revision, slot: int, node_id: str, cname: str, containers: Sequence[Row]
) -> list[str]:
    """Old containers of this slot on this node the new one must stop before it starts."""
    order = rev.spec.rollout.order
    host_ports = any(parse_port(p).host_port for p in rev.spec.ports)
    if order == RolloutOrder.START_FIRST or (order == RolloutOrder.AUTO and not host_ports):
        return []
    return [
        c["name"]
        for c in containers
        if c["node_id"] == node_id
        and c["slot"] == slot
        and c["name"] != cname
        and ContainerState.is_live(c["state"])
    ]


def _needs_deploy(draft: Draft, rev: Revision, node_id: str, cname: str, *, rolling: bool) -> bool:
    """Whether the slot's container `cname` is to be deployed on `node_id` now."""
    world, app = draft.world, draft.app
    found = world.container(node_id, cname)
    current = [found] if found is not None and found["container_hash"] == rev.container_hash else []
    if any(c["state"] == ContainerState.RUNNING for c in current):
        return False
    if rolling and current and current[0]["state"] != ContainerState.RESTARTING:
        # A rollout moves slots on purpose (a stop-first deploy stopped this one): no heal
        # delay. A container that crashes is the health gate's to judge, not healed here.
        last = world.latest.get((node_id, current[0]["name"]))
        return last is None or last["status"] != TaskStatus.FAILED
    last = world.latest.get((node_id, cname))
    if last is None or last["kind"] != TaskKind.DEPLOY or last["revision"] != rev.number:
        return True  # never deployed here, or Docklet itself stopped it: start it now
    node = world.nodes[node_id]
    if last["status"] == TaskStatus.FAILED:
        if last["lost"]:  # nobody said no (the agent went quiet): try again after a while
            return bool(node["docker_ok"]) and world.now - last["finished_at"] >= (
                world.config.heal_delay
            )
        # Docker said no: shown to the user, not retried in a loop. A new
        # revision, or stopping and starting the app, tries again.
        return app["updated_at"] > last["finished_at"]
    # Deployed once and now down: restart it after a grace period (so a crash
    # is visible, as with a restart delay), or at once if its agent restarted.
    down_since = current[0]["down_since"] if current else last["finished_at"]
    if down_since is None or (not current and node["last_seen"] <= last["finished_at"]):
        return False  # no heartbeat since the deploy finished: nothing known yet
    # An app stopped and started again since, like a restarted agent, runs now.
    restarted = max(node["registered_at"], app["updated_at"])
    return world.now - down_since >= world.config.heal_delay or restarted > down_since


def deploy_payload(rev: Revision, replaces: list[str]) -> dict[str, Any]:
    """What an agent needs to create the container: the container part of the spec."""
    return {
        **rev.spec.container_spec(),
        "image": rev.image,
        "container_hash": rev.container_hash,
        "replaces": replaces,
    }


def _unplaced_reason(spec: AppSpec) -> str:
    if spec.placement.nodes:
        return f"no online node among placement.nodes ({', '.join(spec.placement.nodes)})"
    return "no online node to run it: start an agent (docklet-agent) on a Docker host"


# -- stopped and removed ---------------------------------------------------------------


def _for_each(draft: Draft, kind: TaskKind, *, only_running: bool) -> None:
    """A `kind` task for each of the app's containers (the live ones if `only_running`)."""
    for c in draft.world.containers.get(draft.name, []):
        if only_running and not ContainerState.is_live(c["state"]):
            continue
        if draft.is_open(c["node_id"], c["name"]):
            continue
        draft.queue(NewTask(kind, c["node_id"], c["name"], c["slot"], c["revision"]))


def _remove(draft: Draft) -> None:
    """Remove the app's containers; once none is left on a reachable node, forget it."""
    world = draft.world
    # What only an offline node still holds need not keep the app: once the
    # node returns, its leftovers are orphans and are removed then.
    containers = world.containers.get(draft.name, [])
    open_ = world.open.get(draft.name, {})
    if not any(world.reachable(c["node_id"]) for c in containers) and not any(
        world.reachable(node_id) for node_id, _ in open_
    ):
        draft.plan.forget = True
        draft.event(EventKind.APP_FORGOTTEN, f"app {draft.name}: removed from every node")
        return
    _for_each(draft, TaskKind.REMOVE, only_running=False)


# -- the outcome --------------------------------------------------------------------------


def _outcome(draft: Draft) -> Outcome:
    queued = len(draft.plan.tasks)
    reason = _unsettled(draft)
    if queued:
        reason = f"{queued} task(s) queued"
    state = Convergence.BUSY if reason else Convergence.CONVERGED
    return Outcome(draft.name, state, reason, queued, draft.wake_at)


def _unsettled(draft: Draft) -> str:
    """What this app waits on, a clock or work in flight ("" when nothing).

    Conservative: anything but "every slot runs, nothing open, no rollout" is
    looked at again next pass.
    """
    world, name = draft.world, draft.name
    if world.open.get(name):
        return "tasks in flight"
    if name in world.rollouts or draft.plan.rollouts:
        return "a rollout is under way"
    containers = world.containers.get(name, [])
    if draft.app["desired"] == DesiredState.RUNNING:
        if len(containers) == len(draft.placements) and all(
            c["state"] == ContainerState.RUNNING for c in containers
        ):
            return ""
        return "not every slot runs yet"
    if any(ContainerState.is_live(c["state"]) for c in containers):
        return "containers still run"
    return ""
