"""The scheduler's pass: desired state and observed containers in, tasks out.

A pass runs in stages, each in its own short write transaction, so a stage
that fails never stops the next and reports and heartbeats never wait long
behind it: liveness (nodes that went quiet, leases that ran out), the apps
(CHUNK_APPS at a time), orphans, housekeeping. For each app it decides from a
read-only `World` (decide.py, with the rollout controller) and applies the
plan in a savepoint of its own: an app that fails is logged and shown on the
app, and the rest go on.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import TypeVar

from docklet.common.status import TaskKind
from docklet.cp.reconcile.decide import Convergence, Outcome, decide, failed
from docklet.cp.reconcile.plan import NewTask, Plan, apply_plan
from docklet.cp.reconcile.world import World
from docklet.cp.settings import CPConfig
from docklet.cp.store import apps as app_rows
from docklet.cp.store import events, nodes, placements, tasks
from docklet.cp.store import world as reads
from docklet.cp.store.db import Store, savepoint, set_meta

log = logging.getLogger(__name__)

TASK_HISTORY = 3600.0  # finished tasks older than this are pruned (the newest per slot stays)
INTERNAL_ERROR = "internal error while scheduling this app; the control plane log has details"
CHUNK_FAILED = "the transaction of its chunk of apps failed; the control plane log has details"

# Apps per write transaction in a pass: at ten containers an app, a few ms of work
# (more under load, sharing the GIL), so a report or heartbeat never waits long.
CHUNK_APPS = 10

T = TypeVar("T")


class All(Enum):
    """Every app: what a full pass looks at."""

    ALL = "all"


ALL = All.ALL
Scope = Collection[str] | All


@dataclass
class Pass:
    """What one reconcile pass did, and what the next must look at again."""

    queued: int = 0
    looked_at: int = 0  # apps
    # Apps with work in flight or a clock running (a rollout, an open task, a
    # container not running as it should), or that failed: the next pass looks
    # at them again, even if nothing about them is reported changed.
    busy: set[str] = field(default_factory=set)
    # When the soonest health gate's wait ends: the controller takes a pass then,
    # not at its next interval (which would add up to 2 s to every gate).
    wake_at: float = math.inf
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by app

    def add(self, outcome: Outcome) -> None:
        self.outcomes[outcome.app] = outcome
        self.looked_at += 1
        self.queued += outcome.queued
        if outcome.state != Convergence.CONVERGED:
            self.busy.add(outcome.app)
        self.wake_at = min(self.wake_at, outcome.wake_at)


@dataclass
class Chunk:
    """What one chunk's transaction made of its apps."""

    outcomes: list[Outcome]
    unknown: set[str]  # names asked about that are no app

    @classmethod
    def failed(cls, names: Sequence[str]) -> Chunk:
        """A chunk whose transaction failed: each of its apps is looked at again next pass."""
        return cls([Outcome(n, Convergence.FAILED, CHUNK_FAILED) for n in names], set())


def reconcile(
    store: Store,
    config: CPConfig,
    *,
    now: float | None = None,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
    apps: Collection[str] | All | None = None,
) -> Pass:
    """One pass over `apps` (None or ALL: every app); returns what it did.

    `seen`: heartbeats kept in memory, newer than the stored `last_seen`.
    A pass that sees a node change status, or a lease run out, looks at
    every app.
    """
    now = time.time() if now is None else now
    scope: Scope = ALL if apps is None else apps
    # Read outside the write transaction: a thousand nodes, of which a few change.
    silent = nodes.liveness_changes(store.reader(), config, now, started_at, seen)
    if _stage(store, "liveness", partial(_liveness, silent=silent, now=now, config=config), 0):
        scope = ALL  # a node came or went, or work was lost: every app may be touched
    result = Pass()
    unknown = _schedule(store, config, now, scope, result)
    full = scope is ALL
    # Containers of apps this CP does not know come with heartbeats: a full pass, or
    # one asked about a name that is no app, looks for them.
    if full or unknown:
        result.queued += _stage(store, "orphans", _remove_orphans, 0)
    _stage(store, "housekeeping", partial(_housekeeping, config=config, now=now, full=full), None)
    if result.queued:
        log.debug("reconcile: %d task(s) queued for %d app(s)", result.queued, result.looked_at)
    return result


def _stage(store: Store, name: str, work: Callable[[sqlite3.Connection], T], failed: T) -> T:
    """One stage in its own transaction; one that fails is logged and yields `failed`,
    and never stops the next."""
    try:
        with store.write(f"reconcile.{name}") as db:
            return work(db)
    except Exception:
        log.exception("reconcile: stage %s failed; the others go on", name)
        return failed


def _liveness(
    db: sqlite3.Connection, *, silent: list[nodes.Change], now: float, config: CPConfig
) -> int:
    """Nodes that went quiet, and leases that ran out; returns how many changed."""
    changed = nodes.update_liveness(db, silent)
    return changed + tasks.expire_leases(db, now, config.task_max_attempts)


def _schedule(store: Store, config: CPConfig, now: float, scope: Scope, result: Pass) -> set[str]:
    """Decide and apply every app in `scope`, a chunk a transaction; returns the names
    asked about that are no app."""
    reader = store.reader()
    # Each chunk reads its apps: one that is gone is simply not there.
    names = app_rows.names(reader) if scope is ALL else sorted(scope)
    if not names:
        return set()
    # Read outside the write transactions: a node heard meanwhile is heard next pass.
    nodes_, load = reads.nodes(reader), placements.per_node(reader)
    unknown: set[str] = set()
    for start in range(0, len(names), CHUNK_APPS):
        chunk = names[start : start + CHUNK_APPS]
        work = partial(
            _schedule_chunk, config=config, now=now, chunk=chunk, nodes_=nodes_, load=load
        )
        done = _stage(store, "schedule", work, Chunk.failed(chunk))
        for outcome in done.outcomes:
            result.add(outcome)
        unknown |= done.unknown
    return unknown


def _schedule_chunk(
    db: sqlite3.Connection,
    *,
    config: CPConfig,
    now: float,
    chunk: Sequence[str],
    nodes_: Mapping[str, sqlite3.Row],
    load: Counter[str],
) -> Chunk:
    world = World.read(db, config, now, chunk, nodes_)
    rows = app_rows.rows(db, chunk)
    outcomes = [_converge(db, world, load, app) for app in rows]
    return Chunk(outcomes, set(chunk).difference(r["name"] for r in rows))


def _converge(
    db: sqlite3.Connection, world: World, load: Counter[str], app: sqlite3.Row
) -> Outcome:
    """Decide one app and apply its plan in a savepoint: one that fails, the others go on.

    `load` (slots per node, every app) takes in what the plan placed.
    """
    try:
        decision = decide(world, load, app)
        with savepoint(db):
            apply_plan(db, decision.plan)
    except Exception:
        log.exception("reconcile: app %s failed; the other apps go on", app["name"])
        apply_plan(db, failed(world, app, INTERNAL_ERROR))
        return Outcome(app["name"], Convergence.FAILED, INTERNAL_ERROR)
    if decision.load_delta:
        load.update(decision.load_delta)
    return decision.outcome


def _remove_orphans(db: sqlite3.Connection) -> int:
    """Containers labelled for apps this CP no longer knows (removed while a node was away)."""
    plans = orphan_plans(reads.orphans(db), tasks.open_tasks(db))
    for plan in plans:
        apply_plan(db, plan)
    return sum(len(p.tasks) for p in plans)


def orphan_plans(
    orphans: Sequence[sqlite3.Row], open_: Mapping[str, Mapping[tuple[str, str], object]]
) -> list[Plan]:
    """A plan per unknown app: remove each of its containers that has no open task."""
    plans: dict[str, Plan] = {}
    queued: set[tuple[str, str, str]] = set()
    for c in orphans:
        app, key = c["app"], (c["node_id"], c["name"])
        if key in open_.get(app, {}) or (app, *key) in queued:
            continue
        queued.add((app, *key))
        plans.setdefault(app, Plan(app)).tasks.append(
            NewTask(TaskKind.REMOVE, c["node_id"], c["name"], c["slot"])
        )
    return list(plans.values())


def _housekeeping(db: sqlite3.Connection, *, config: CPConfig, now: float, full: bool) -> None:
    set_meta(db, "last_pass_at", repr(now))  # a restart adds its downtime to deadlines
    events.prune(db, config.events_kept)  # a range of ids: cheap in every pass
    if full:  # finding finished tasks reads them all: in full passes only
        tasks.prune(db, now - TASK_HISTORY)
