"""The health gate: is a slot's new container healthy for long enough?

It judges containers from what agents report (Docker's own state, health,
restart count and start time), and the deploy task's outcome. A task that
failed because Docker said no fails the slot; a lost node or lease is not the
revision's fault: the scheduler places the slot again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from docklet.common.status import ContainerState, TaskKind, TaskStatus
from docklet.common.units import parse_duration
from docklet.cp.reconcile.world import Revision, World
from docklet.cp.store.tasks import container_name


class Health(StrEnum):
    OK = "ok"
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True)
class Verdict:
    """The health gate's word on one slot's new container."""

    state: Health
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    running: bool = False
    lost: bool = False  # no node, or a silent one: waiting is not the revision's fault
    wake_at: float = math.inf  # when a wait for min_healthy_time ends (the pass that can pass it)


WAIT = Verdict(Health.WAIT)
LOST = Verdict(Health.WAIT, lost=True)


def judge(world: World, app: str, slot: int, node_id: str | None, rev: Revision) -> Verdict:
    """Is the slot's container of `rev` on `node_id` healthy for long enough?"""
    if node_id is None or not world.reachable(node_id):
        return LOST  # placed again by the scheduler; its deadline starts again
    name = container_name(app, slot, rev.container_hash)
    task = world.latest.get((node_id, name))
    ours = task is not None and task["kind"] == TaskKind.DEPLOY and task["revision"] == rev.number
    c = world.container(node_id, name)
    if c is None or c["state"] == ContainerState.CREATED:
        if ours and task["status"] == TaskStatus.FAILED and not task["lost"]:
            error = task["error"]
            return Verdict(Health.FAIL, error or "the deploy failed", {"error": error})
        return WAIT
    started = c["started_at"] or (task["finished_at"] if ours else None) or world.now
    failed = _failure(c, started, world.now)
    if failed is not None:
        return failed
    if c["state"] != ContainerState.RUNNING or c["health"] == "starting":
        return Verdict(Health.WAIT, running=c["state"] == ContainerState.RUNNING)
    healthy_at = started + parse_duration(rev.spec.rollout.min_healthy_time)
    if world.now < healthy_at:
        return Verdict(Health.WAIT, running=True, wake_at=healthy_at)
    if rev.spec.healthcheck is not None and c["health"] != "healthy":
        return Verdict(Health.WAIT, running=True)
    return Verdict(Health.OK, running=True)


def _failure(c: Any, started: float, now: float) -> Verdict | None:
    """Why the container failed the gate, with its evidence; None if it did not."""
    evidence = {
        "exit_code": c["exit_code"],
        "health": c["health_log"] or c["health"],
        "logs": c["logs"],
        "error": None,
    }
    if c["state"] in (ContainerState.EXITED, ContainerState.DEAD):
        after = max(0.0, (c["down_since"] or now) - started)
        reason = f"exited with code {c['exit_code']} after {after:.0f}s"
    elif c["state"] == ContainerState.RESTARTING or c["restarts"]:
        reason = f"crash loop: restarted {max(1, c['restarts'] or 0)} time(s)"
    elif c["health"] == "unhealthy":
        reason = "unhealthy" + (f": {c['health_log']}" if c["health_log"] else "")
    else:
        return None
    return Verdict(Health.FAIL, reason, evidence)
