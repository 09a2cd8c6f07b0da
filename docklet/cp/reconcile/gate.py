"""The health gate: is a slot's new container healthy for long enough?

It judges containers from what agents report (Docker's own state and health),
and the deploy task's outcome. A task that failed because Docker said no fails
the slot; a lost node or lease is not the revision's fault: the scheduler
places the slot again.

A container that exited or restarted at any moment of its `min_healthy_time`
fails, however the samples fall: Docker's restart count, start and finish
times outlive a sample, and the store keeps the start and restart count its
run began with (store/nodes.py). It passes only on an inspect taken after
its window ended that still shows the start it began with; a sample that
merely finds it running proves nothing about the seconds before.
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
    running: bool = False  # it runs now (a failed one too: it may crash again)
    lost: bool = False  # no node, or a silent one: waiting is not the revision's fault
    wake_at: float = math.inf  # when a wait for min_healthy_time ends (the pass that can pass it)


CLOCK_GRAIN = 0.001  # seconds: Docker's times read twice may differ by their rounding
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
    run = Run.of(c, (task["finished_at"] if ours else None) or world.now, world.now)
    failed = _failure(c, run, world.now)
    if failed is not None:
        return failed
    if c["state"] != ContainerState.RUNNING or c["health"] == "starting":
        return Verdict(Health.WAIT, running=c["state"] == ContainerState.RUNNING)
    healthy_at = run.began + parse_duration(rev.spec.rollout.min_healthy_time)
    if world.now < healthy_at:
        return Verdict(Health.WAIT, running=True, wake_at=healthy_at)
    if run.proven_until < healthy_at:
        return Verdict(Health.WAIT, running=True)  # the agent's next inspect covers it
    if rev.spec.healthcheck is not None and c["health"] != "healthy":
        return Verdict(Health.WAIT, running=True)
    return Verdict(Health.OK, running=True)


@dataclass(frozen=True)
class Run:
    """A container's current run as the evidence tells it (Docker's times, not samples)."""

    began: float  # when the run the gate judges began (its first start seen)
    restarts: int  # Docker's restarts since it began
    restarted: bool  # started again since it began (by Docker or anyone)
    stopped: bool  # it stopped since it began, at FinishedAt
    # Until when it provably ran without a break: its start time unchanged in an
    # inspect taken then. A sample without an inspect proves nothing about the past.
    proven_until: float

    @classmethod
    def of(cls, c: Any, fallback: float, now: float) -> Run:
        """`fallback`: when the run began, for an agent that reports no start times."""
        began = c["first_started_at"] or c["started_at"] or fallback
        started, finished = c["started_at"], c["finished_at"]
        restarts = max(0, (c["restarts"] or 0) - (c["first_restarts"] or 0))
        restarted = started is not None and started > began + CLOCK_GRAIN
        stopped = finished is not None and finished > began + CLOCK_GRAIN
        if started is None:
            proven = now  # an agent without inspects: the latest sample is all there is
        else:
            proven = c["inspected_at"] if c["inspected_at"] is not None else now
        return cls(began, restarts, restarted, stopped, proven)


def _failure(c: Any, run: Run, now: float) -> Verdict | None:
    """Why the container failed the gate, with its evidence; None if it did not."""
    state = c["state"]
    # Whether it runs right now, failed or not: what a rollback waits for.
    running = state == ContainerState.RUNNING
    exited = state in (ContainerState.EXITED, ContainerState.DEAD)
    crashed = state == ContainerState.RESTARTING or run.restarts or run.restarted or run.stopped
    if exited or crashed:
        code = _exit_code(c, exited)
        reason = exit_reason(code, _run_length(c, run, now, exited), run.restarts)
        return Verdict(Health.FAIL, reason, _evidence(c, code), running=running)
    if c["health"] == "unhealthy":
        reason = "unhealthy" + (f": {c['health_log']}" if c["health_log"] else "")
        return Verdict(Health.FAIL, reason, _evidence(c, c["exit_code"]), running=running)
    return None


def exit_reason(code: int | None, after: float | None, restarts: int) -> str:
    """ "exited with code 1 after 1s, restarted 3 times": what a person reads first."""
    said = "exited" + (f" with code {code}" if code is not None else " (exit code not known)")
    if after is not None:
        said += f" after {after:.0f}s"
    if restarts:
        said += f", restarted {restarts} time{'s' if restarts != 1 else ''}"
    return said


def _exit_code(c: Any, exited: bool) -> int | None:
    """The code its last run exited with: running again, only an inspect (or a list row
    while Docker waits to restart it) still says."""
    if exited:
        return c["exit_code"]
    if c["last_exit_code"] is None and c["state"] == ContainerState.RESTARTING:
        return c["exit_code"]
    return c["last_exit_code"]


def _run_length(c: Any, run: Run, now: float, exited: bool) -> float | None:
    """How long the run that ended lasted: Docker's times, else the CP's."""
    if c["last_run"] is not None:
        return float(c["last_run"])
    if exited:
        return max(0.0, (c["finished_at"] or c["down_since"] or now) - run.began)
    return None


def _evidence(c: Any, code: int | None) -> dict[str, Any]:
    return {
        "exit_code": code,
        "health": c["health_log"] or c["health"],
        "logs": c["logs"],
        "error": None,
    }
