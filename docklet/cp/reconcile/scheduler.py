"""The scheduler: turns desired state and observed containers into tasks.

Each pass compares, per app, what should run (the current revision's
replicas, each in a slot placed on a node) with what agents last reported,
and queues the tasks that close the gap. A pass is idempotent: a slot with
an open task is left alone, so running it twice queues nothing twice.

A pass reads what it needs once (`World`), not once per app or container,
so it costs O(apps + containers). Its stages (liveness, leases, apps,
orphans, housekeeping) run apart, and each app in its own savepoint: one
that fails is logged and shown on the app, and the rest go on.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docklet.common.status import (
    ContainerState,
    DesiredState,
    EventKind,
    NodeStatus,
    TaskKind,
    TaskStatus,
)
from docklet.common.units import parse_port
from docklet.cp.desired.spec import AppSpec, RolloutOrder
from docklet.cp.reconcile.rollout import LIVE, Controller
from docklet.cp.settings import CPConfig
from docklet.cp.store import events, nodes, tasks
from docklet.cp.store.db import Store, among, savepoint, set_meta

log = logging.getLogger(__name__)

TASK_HISTORY = 3600.0  # finished tasks older than this are pruned (the newest per slot stays)
INTERNAL_ERROR = "internal error while scheduling this app; the control plane log has details"

SPEC_CACHE_SIZE = 4096
# Apps per write transaction in a pass: at ten containers an app, a few ms of work
# (more under load, sharing the GIL), so a report or heartbeat never waits long.
CHUNK_APPS = 10

_specs: dict[str, AppSpec] = {}  # parsed specs by spec hash, shared by every pass

Row = sqlite3.Row
Open = dict[tuple[str, str], Any]  # (node, container) → open task (a Row, or a container row)


Placed = tuple[str, int | None]  # (node, revision; None: the app's stable revision)
Shared = tuple[dict[str, Row], Counter[str]]  # every node, and how many slots each holds


def read_shared(db: sqlite3.Connection) -> Shared:
    """What every chunk of a pass needs: the nodes, and the slots on each (for spreading)."""
    nodes_ = {r["node_id"]: r for r in db.execute("SELECT * FROM nodes")}
    load = Counter(dict(db.execute("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id")))
    return nodes_, load


@dataclass
class World:
    """What one pass knows, read once at its start."""

    config: CPConfig
    now: float
    nodes: dict[str, Row]
    containers: dict[str, list[Row]]
    open: dict[str, Open]
    latest: dict[tuple[str, str], Row]  # the newest task per (node, container)
    placements: dict[str, dict[int, Placed]]
    revisions: dict[tuple[str, int], Row] = field(default_factory=dict)
    revision_status: dict[tuple[str, int], str] = field(default_factory=dict)
    rollouts: dict[str, Row] = field(default_factory=dict)  # live rollouts by app
    load: Counter[str] = field(default_factory=Counter)  # slots per node, all apps
    verified: dict[str, set[int]] = field(default_factory=dict)  # slots the gate passed
    wake_at: float = math.inf  # when a health gate's wait ends (time.time())
    _by_name: dict[tuple[str, str], Row] | None = None

    @classmethod
    def read(
        cls,
        db: sqlite3.Connection,
        config: CPConfig,
        now: float,
        apps: Sequence[str] | None = None,
        shared: Shared | None = None,
    ) -> World:
        """What a pass needs of `apps` (every app if None).

        `shared`: the nodes and slot counts, read once a pass rather than once
        a chunk (the pass keeps `load` up to date as it places slots).
        """
        only, params = among("app", apps)
        containers: dict[str, list[Row]] = defaultdict(list)
        for c in db.execute(
            f"SELECT * FROM containers WHERE {only} ORDER BY app, slot, node_id", params
        ):
            containers[c["app"]].append(c)
        placements: dict[str, dict[int, Placed]] = defaultdict(dict)
        for p in db.execute(
            f"SELECT app, slot, node_id, revision FROM placements WHERE {only}", params
        ):
            placements[p["app"]][p["slot"]] = (p["node_id"], p["revision"])
        nodes_, load = shared or read_shared(db)
        rollouts = {
            r["app"]: r
            for r in db.execute(f"SELECT * FROM rollouts WHERE {LIVE} AND {only}", params)
        }
        # The revisions a pass can touch: each app's stable and target ones, those of
        # its live rollout, and any a slot still runs.
        revisions = {
            (r["app"], r["number"]): r
            for r in db.execute(
                "SELECT r.* FROM revisions r JOIN apps a ON a.name = r.app"
                " LEFT JOIN rollouts o ON o.app = r.app AND o." + LIVE + " WHERE"
                f" {among('r.app', apps)[0]} AND (r.number IN"
                " (a.current_revision, a.target_revision, o.revision, o.from_revision)"
                " OR r.number IN (SELECT p.revision FROM placements p WHERE p.app = r.app))",
                params,
            )
        }
        return cls(
            config=config,
            now=now,
            nodes=nodes_,
            containers=containers,
            open=tasks.open_tasks(db, apps),
            latest=tasks.latest_per_container(db, apps),
            placements=placements,
            revisions=revisions,
            revision_status={k: r["status"] for k, r in revisions.items()},
            rollouts=rollouts,
            load=load,
        )

    def container(self, node_id: str, name: str) -> Row | None:
        """The container of that name on that node, as last reported (an index, built once)."""
        if self._by_name is None:
            self._by_name = {
                (c["node_id"], c["name"]): c for rows in self.containers.values() for c in rows
            }
        return self._by_name.get((node_id, name))

    def reachable(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node["status"] != NodeStatus.OFFLINE

    def revision_row(self, app: str, number: int) -> dict[str, Any]:
        row = self.revisions[(app, number)]
        return {**dict(row), "status": self.revision_status[(app, number)]}

    def revision(self, app: str, number: int) -> Revision:
        return Revision.of(self.revisions[(app, number)])

    def eligible(self, spec: AppSpec) -> list[str]:
        return [
            n
            for n, row in self.nodes.items()
            if row["status"] == NodeStatus.ONLINE
            and row["docker_ok"]
            and (not spec.placement.nodes or n in spec.placement.nodes)
        ]

    def place_for(self, db: sqlite3.Connection, app: str, slot: int, number: int) -> str | None:
        """Spread: the eligible node with the fewest of this app's slots, then fewest overall."""
        eligible = self.eligible(self.revision(app, number).spec)
        if not eligible:
            return None
        mine = Counter(p[0] for s, p in self.placements.get(app, {}).items() if s != slot)
        node_id = min(eligible, key=lambda n: (mine[n], self.load[n], n))
        self.load[node_id] += 1
        previous = self.placements.get(app, {}).get(slot)
        if previous:
            self.load[previous[0]] -= 1
            if previous[0] != node_id:  # work queued for the old node is moot now
                tasks.cancel_pending(
                    db, app, f"slot {slot} moved to {node_id}", slot=slot, node_id=previous[0]
                )
        moved = f" (moved from {previous[0]})" if previous else ""
        events.record(
            db,
            EventKind.SLOT_PLACED,
            f"app {app}: slot {slot} on {node_id}{moved}",
            app=app,
            node_id=node_id,
        )
        return node_id


@dataclass
class Pass:
    """What one reconcile pass did, and what the next must look at again."""

    queued: int = 0
    looked_at: int = 0  # apps
    # Apps with work in flight or a clock running (a rollout, an open task, a
    # container not running as it should): the next pass looks at them again,
    # even if nothing about them is reported changed.
    busy: set[str] = field(default_factory=set)
    # When the soonest health gate's wait ends: the controller takes a pass then,
    # not at its next interval (which would add up to 2 s to every gate).
    wake_at: float = math.inf


def reconcile(
    store: Store,
    config: CPConfig,
    now: float | None = None,
    started_at: float = 0.0,
    seen: Mapping[str, float] | None = None,
    apps: Collection[str] | None = None,
) -> Pass:
    """One pass over `apps` (every app if None); returns what it did.

    `seen`: heartbeats kept in memory, newer than the stored `last_seen`.
    A pass that sees a node change status, or a lease run out, looks at
    every app. The apps are taken CHUNK_APPS at a time, each chunk in its own
    short write transaction, so reports and heartbeats are never held up
    behind a whole pass.
    """
    now = time.time() if now is None else now
    result = Pass()

    # Read outside the write transaction: a thousand nodes, of which a few change.
    silent = nodes.liveness_changes(store.reader(), config, now, started_at, seen)

    def liveness(db: sqlite3.Connection) -> int:
        changed = nodes.update_liveness(db, silent)
        expired = tasks.expire_leases(db, now, config.task_max_attempts)
        return changed + expired

    def orphans(db: sqlite3.Connection) -> int:
        return _remove_orphans(db, tasks.open_tasks(db))

    def housekeeping(db: sqlite3.Connection) -> int:
        set_meta(db, "last_pass_at", repr(now))  # a restart adds its downtime to deadlines
        events.prune(db, config.events_kept)  # a range of ids: cheap in every pass
        if apps is None:  # finding finished tasks reads them all: in full passes only
            tasks.prune(db, now - TASK_HISTORY)
        return 0

    if _stage(store, liveness) and apps is not None:
        apps = None  # a node came or went, or work was lost: every app may be touched
    if apps is None:
        names = [r[0] for r in store.reader().execute("SELECT name FROM apps ORDER BY name")]
    else:
        names = sorted(apps)  # each chunk reads its apps: one that is gone is simply not there
    unknown: set[str] = set()  # names asked about that are no app
    # Read outside the write transactions: a node heard meanwhile is heard next pass.
    shared = read_shared(store.reader()) if names else None
    for start in range(0, len(names), CHUNK_APPS):
        chunk = names[start : start + CHUNK_APPS]

        def schedule(db: sqlite3.Connection, chunk: list[str] = chunk) -> int:
            world = World.read(db, config, now, chunk, shared)
            rows = db.execute(
                f"SELECT * FROM apps WHERE {among('name', chunk)[0]} ORDER BY name", chunk
            ).fetchall()
            unknown.update(set(chunk).difference(r["name"] for r in rows))
            result.looked_at += len(rows)
            queued = 0
            for app in rows:
                done = _isolated(db, app, world)
                queued += max(done, 0)
                if done != 0 or not _settled(app, world):
                    result.busy.add(app["name"])
            result.wake_at = min(result.wake_at, world.wake_at)
            return queued

        queued = _stage(store, schedule, failed=-1)
        if queued < 0:  # looked at again next pass
            result.busy.update(chunk)
        result.queued += max(queued, 0)
    # Containers of apps this CP does not know come with heartbeats: a full pass, or
    # one asked about a name that is no app, looks for them.
    if apps is None or unknown:
        result.queued += _stage(store, orphans)
    _stage(store, housekeeping)
    if result.queued:
        log.debug("reconcile: %d task(s) queued for %d app(s)", result.queued, len(names))
    return result


def _stage(store: Store, stage: Callable[[sqlite3.Connection], int], failed: int = 0) -> int:
    """One stage in its own transaction: a stage that fails never stops the next."""
    try:
        with store.write(f"reconcile.{stage.__name__}") as db:
            return stage(db)
    except Exception:
        log.exception("reconcile: stage %s failed; the others go on", stage.__name__)
        return failed


def _settled(app: Row, world: World) -> bool:
    """Whether nothing of this app waits on a clock or on work in flight.

    Conservative: anything but "every slot runs, nothing open, no rollout"
    is looked at again next pass.
    """
    name = app["name"]
    if world.open.get(name) or name in world.rollouts:
        return False
    containers = world.containers.get(name, [])
    if app["desired"] == DesiredState.RUNNING:
        return len(containers) == len(world.placements.get(name, {})) and all(
            c["state"] == ContainerState.RUNNING for c in containers
        )
    return not any(ContainerState.is_live(c["state"]) for c in containers)


def _isolated(db: sqlite3.Connection, app: Row, world: World) -> int:
    try:
        with savepoint(db):
            return _reconcile_app(db, app, world)
    except Exception:
        log.exception("reconcile: app %s failed; the other apps go on", app["name"])
        _set_error(db, app["name"], app["last_error"], INTERNAL_ERROR)
        return -1  # looked at again next pass


def _reconcile_app(db: sqlite3.Connection, app: Row, world: World) -> int:
    name = app["name"]
    containers = world.containers.get(name, [])
    open_ = world.open.setdefault(name, {})
    if app["desired"] == DesiredState.RUNNING and app["current_revision"] is not None:
        tasks.cancel_pending(db, name, "app is running again", kind=TaskKind.STOP)
        controller = Controller(db, app, world)
        live = controller.advance()
        return _run(db, app, controller.current, live, containers, open_, world)
    tasks.cancel_pending(db, name, f"app is {app['desired']}", kind=TaskKind.DEPLOY)
    if app["desired"] == DesiredState.STOPPED:
        if app["current_revision"] is not None:
            Controller(db, app, world).advance()  # a new revision of a stopped app takes over
        return _for_each(db, name, containers, open_, TaskKind.STOP, only_running=True)
    # What only an offline node still holds need not keep the app: once the
    # node returns, its leftovers are orphans and are removed then.
    if not any(world.reachable(c["node_id"]) for c in containers) and not any(
        world.reachable(node_id) for node_id, _ in open_
    ):
        _forget(db, name)
        return 0
    return _for_each(db, name, containers, open_, TaskKind.REMOVE, only_running=False)


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


def _run(
    db: sqlite3.Connection,
    app: Row,
    current: int,
    live: Row | None,
    containers: list[Row],
    open_: Open,
    world: World,
) -> int:
    """Each slot runs its revision on its node; everything else of the app goes."""
    name = app["name"]
    placements = world.placements.setdefault(name, {})
    stable = world.revision(name, current)
    slots = set(range(1, stable.spec.replicas + 1)) | {
        s for s, p in placements.items() if p[1] is not None
    }
    queued = 0
    unplaced = False
    targets: dict[int, tuple[str, str]] = {}  # slot → (node, container name)
    for slot in sorted(slots):
        rev = world.revision(name, (placements.get(slot) or (None, None))[1] or current)
        node_id = _node_for(db, name, slot, rev, world)
        if node_id is None:
            unplaced = True
            continue
        cname = tasks.container_name(name, slot, rev.container_hash)
        targets[slot] = (node_id, cname)
        if (node_id, cname) in open_:
            continue
        found = world.container(node_id, cname)
        here = [found] if found is not None else []
        if _needs_deploy(app, rev, slot, here, world.nodes[node_id], world, live is not None):
            replaces = _replaces(rev, slot, node_id, cname, containers)
            tasks.create(
                db,
                node_id=node_id,
                app=name,
                kind=TaskKind.DEPLOY,
                container=cname,
                slot=slot,
                revision=rev.number,
                payload=deploy_payload(rev, replaces),
            )
            open_[(node_id, cname)] = True
            queued += 1
    _set_error(db, name, app["last_error"], _unplaced_reason(stable.spec) if unplaced else None)
    for slot in [s for s in placements if s not in slots]:
        world.load[placements.pop(slot)[0]] -= 1
        db.execute("DELETE FROM placements WHERE app = ? AND slot = ?", (name, slot))
    kept = _kept_hashes(name, live, world)
    for c in containers:
        if (c["node_id"], c["name"]) in open_ or targets.get(c["slot"]) == (
            c["node_id"],
            c["name"],
        ):
            continue
        if c["container_hash"] in kept and c["slot"] in targets:
            # A rollout keeps the old revision's container (a rollback restarts it);
            # once its slot's new container passed the gate it is stopped, not removed.
            if c["slot"] in world.verified.get(name, set()) and ContainerState.is_live(c["state"]):
                kind = TaskKind.STOP
            else:
                continue
        else:
            kind = TaskKind.REMOVE
        tasks.create(
            db, node_id=c["node_id"], app=name, kind=kind, container=c["name"], slot=c["slot"]
        )
        open_[(c["node_id"], c["name"])] = c
        queued += 1
    return queued


def _node_for(
    db: sqlite3.Connection, app: str, slot: int, rev: Revision, world: World
) -> str | None:
    """The slot's node; a slot leaves it only when it is gone or no longer allowed."""
    placed = world.placements[app].get(slot)
    if placed is not None:
        node_id, number = placed
        allowed = not rev.spec.placement.nodes or node_id in rev.spec.placement.nodes
        if world.reachable(node_id) and allowed:
            return node_id
    else:
        number = None
    node_id = world.place_for(db, app, slot, rev.number)
    if node_id is None:
        return None
    world.placements[app][slot] = (node_id, number)
    db.execute(
        "INSERT INTO placements (app, slot, node_id, revision) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (app, slot) DO UPDATE SET node_id = excluded.node_id",
        (app, slot, node_id, number),
    )
    return node_id


def _kept_hashes(app: str, live: Row | None, world: World) -> set[str]:
    if live is None:
        return set()
    return {
        world.revisions[(app, n)]["container_hash"]
        for n in (live["revision"], live["from_revision"])
        if (app, n) in world.revisions
    }


def _replaces(
    rev: Revision, slot: int, node_id: str, cname: str, containers: list[Row]
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


def _needs_deploy(
    app: Row, rev: Revision, slot: int, here: list[Row], node: Row, world: World, rolling: bool
) -> bool:
    current = [c for c in here if c["container_hash"] == rev.container_hash]
    if any(c["state"] == ContainerState.RUNNING for c in current):
        return False
    if rolling and current and current[0]["state"] != ContainerState.RESTARTING:
        # A rollout moves slots on purpose (a stop-first deploy stopped this one): no heal
        # delay. A container that crashes is the health gate's to judge, not healed here.
        last = world.latest.get((node["node_id"], current[0]["name"]))
        return last is None or last["status"] != TaskStatus.FAILED
    last = world.latest.get(
        (node["node_id"], tasks.container_name(app["name"], slot, rev.container_hash))
    )
    if last is None or last["kind"] != TaskKind.DEPLOY or last["revision"] != rev.number:
        return True  # never deployed here, or Docklet itself stopped it: start it now
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


def _for_each(
    db: sqlite3.Connection,
    app: str,
    containers: list[Row],
    open_: Open,
    kind: TaskKind,
    *,
    only_running: bool,
) -> int:
    queued = 0
    for c in containers:
        if only_running and not ContainerState.is_live(c["state"]):
            continue
        if (c["node_id"], c["name"]) in open_:
            continue
        tasks.create(
            db,
            node_id=c["node_id"],
            app=app,
            kind=kind,
            container=c["name"],
            slot=c["slot"],
            revision=c["revision"],
        )
        open_[(c["node_id"], c["name"])] = c
        queued += 1
    return queued


def _remove_orphans(db: sqlite3.Connection, open_tasks: dict[str, Open]) -> int:
    """Containers labelled for apps this CP no longer knows (removed while a node was away)."""
    rows = db.execute(
        "SELECT c.node_id, c.name, c.app, c.slot FROM containers c"
        " LEFT JOIN apps a ON a.name = c.app WHERE a.name IS NULL"
    ).fetchall()
    queued = 0
    for c in rows:
        open_ = open_tasks.setdefault(c["app"], {})
        if (c["node_id"], c["name"]) in open_:
            continue
        tasks.create(
            db,
            node_id=c["node_id"],
            app=c["app"],
            kind=TaskKind.REMOVE,
            container=c["name"],
            slot=c["slot"],
        )
        open_[(c["node_id"], c["name"])] = c
        queued += 1
    return queued


def _forget(db: sqlite3.Connection, app: str) -> None:
    """The app is gone from the repo and from every node: drop its records."""
    db.execute("DELETE FROM apps WHERE name = ?", (app,))
    tasks.forget_app(db, app)
    events.record(db, EventKind.APP_FORGOTTEN, f"app {app}: removed from every node", app=app)


def _unplaced_reason(spec: AppSpec) -> str:
    if spec.placement.nodes:
        return f"no online node among placement.nodes ({', '.join(spec.placement.nodes)})"
    return "no online node to run it: start an agent (docklet-agent) on a Docker host"


def _set_error(db: sqlite3.Connection, app: str, before: str | None, message: str | None) -> None:
    if before != message:
        db.execute("UPDATE apps SET last_error = ? WHERE name = ?", (message, app))
        if message:
            events.record(db, EventKind.APP_UNSCHEDULABLE, f"app {app}: {message}", app=app)
