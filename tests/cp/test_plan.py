"""The scheduler's decisions as exact values: a state in a real SQLite file, the plan out.

Each test writes a state through the store's own writers (nodes, apps,
revisions, placements, containers as an agent reported them), reads the
`World` a pass would read, and compares what `decide` returns, writes and
all, with the exact plan expected. Nothing is applied: deciding writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docklet.common.status import EventKind, RevisionStatus, RolloutStatus, TaskKind
from docklet.cp.desired.spec import AppSpec
from docklet.cp.reconcile.decide import Convergence, Decision, Outcome, decide
from docklet.cp.reconcile.plan import (
    KEEP,
    Cancel,
    Event,
    NewTask,
    Plan,
    RevisionChange,
    RolloutChange,
    apply_plan,
)
from docklet.cp.reconcile.world import World
from docklet.cp.settings import CPConfig
from docklet.cp.store import apps, nodes, placements, revisions
from docklet.cp.store import world as reads
from docklet.cp.store.db import Store, dumps
from docklet.wire.protocol import ObservedContainer, Registration

NOW = 1_700_000_000.0
RUNNING_AGAIN = Cancel("app is running again", kind=TaskKind.STOP)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def node(store: Store, name: str, status: str = "online") -> None:
    with store.write() as db:
        nodes.register(db, Registration(engine_id=f"engine-{name}", name=name))
        db.execute("UPDATE nodes SET status = ? WHERE node_id = ?", (status, name))


def web(**fields: Any) -> AppSpec:
    return AppSpec.model_validate({"name": "web", "image": "nginx:1.25", **fields})


def revision(store: Store, spec: AppSpec, number: int, status: RevisionStatus) -> None:
    """Revision `number` of the app, as sync records it (creating the app with its first)."""
    with store.write() as db:
        if number == 1:
            apps.create(db, spec.name, spec.state, NOW - 600)
        revisions.create(
            db,
            app=spec.name,
            number=number,
            spec=dumps(spec.model_dump(mode="json")),
            hashes=(spec.revision_hash(), spec.container_hash(), spec.runtime_hash()),
            commit=(f"c{number}" * 20, "tester <t@example.com>", "m"),
            created_at=NOW - 600,
            image_digest=None,
        )
        revisions.set_status(db, spec.name, number, status, None)
        apps.set_target(db, spec.name, number, NOW - 600, first=number == 1)


def runs(store: Store, node_id: str, spec: AppSpec, slot: int, number: int = 1) -> str:
    """Slot `slot` of `spec` is placed on `node_id` and its container runs there."""
    name = f"docklet.{spec.name}.{slot}.{spec.container_hash()[:8]}"
    labels = {
        "docklet.app": spec.name,
        "docklet.slot": str(slot),
        "docklet.revision": str(number),
        "docklet.spec-hash": spec.container_hash(),
    }
    seen = ObservedContainer(id=f"{name}-id", name=name, state="running", labels=labels)
    with store.write() as db:
        placements.place(db, spec.name, slot, node_id, None)
        nodes.observe(db, node_id, seen, NOW - 300)
    return name


def decision(store: Store, app: str = "web") -> Decision:
    """What a pass at NOW decides for `app`, read as a pass reads it."""
    db = store.reader()
    world = World.read(db, CPConfig(data_dir=Path("/nonexistent")), NOW, [app], reads.nodes(db))
    row = apps.get(db, app)
    assert row is not None
    return decide(world, placements.per_node(db), row)


def deploy(spec: AppSpec, node_id: str, slot: int, number: int = 1) -> NewTask:
    name = f"docklet.{spec.name}.{slot}.{spec.container_hash()[:8]}"
    payload = {
        **spec.container_spec(),
        "image": spec.image,
        "container_hash": spec.container_hash(),
        "replaces": [],
    }
    return NewTask(TaskKind.DEPLOY, node_id, name, slot, number, payload)


def test_a_new_two_replica_app_on_two_nodes_is_spread_and_deployed(store: Store) -> None:
    node(store, "a")
    node(store, "b")
    spec = web(replicas=2)
    revision(store, spec, 1, RevisionStatus.PENDING)
    done = decision(store)
    assert done.plan == Plan(
        "web",
        cancels=[RUNNING_AGAIN],
        slots={1: ("a", None), 2: ("b", None)},
        events=[
            Event(EventKind.SLOT_PLACED, "app web: slot 1 on a", "a"),
            Event(EventKind.SLOT_PLACED, "app web: slot 2 on b", "b"),
        ],
        tasks=[deploy(spec, "a", 1), deploy(spec, "b", 2)],
    )
    assert done.outcome == Outcome("web", Convergence.BUSY, "2 task(s) queued", queued=2)
    assert done.load_delta == {"a": 1, "b": 1}


def test_a_scale_down_drops_the_extra_slots_and_removes_their_containers(store: Store) -> None:
    node(store, "a")
    v1 = web(replicas=3)
    revision(store, v1, 1, RevisionStatus.STABLE)
    names = [runs(store, "a", v1, slot) for slot in (1, 2, 3)]
    revision(store, web(replicas=1), 2, RevisionStatus.PENDING)  # the same containers
    done = decision(store)
    assert done.plan == Plan(
        "web",
        cancels=[RUNNING_AGAIN],
        # Nothing new to verify: v2 is stable at once, no rollout.
        revisions={
            1: RevisionChange(RevisionStatus.REPLACED),
            2: RevisionChange(RevisionStatus.STABLE),
        },
        current_revision=2,
        slots={2: None, 3: None},
        tasks=[
            NewTask(TaskKind.REMOVE, "a", names[1], 2),
            NewTask(TaskKind.REMOVE, "a", names[2], 3),
        ],
    )
    assert done.outcome.state == Convergence.BUSY and done.outcome.queued == 2
    assert done.load_delta == {"a": -2}


def test_a_slot_on_a_node_gone_offline_moves_and_its_old_container_goes(store: Store) -> None:
    node(store, "a", status="offline")
    node(store, "b")
    spec = web()
    revision(store, spec, 1, RevisionStatus.STABLE)
    old = runs(store, "a", spec, 1)
    done = decision(store)
    assert done.plan == Plan(
        "web",
        cancels=[RUNNING_AGAIN, Cancel("slot 1 moved to b", slot=1, node_id="a")],
        slots={1: ("b", None)},
        events=[Event(EventKind.SLOT_PLACED, "app web: slot 1 on b (moved from a)", "b")],
        tasks=[deploy(spec, "b", 1), NewTask(TaskKind.REMOVE, "a", old, 1)],
    )
    assert done.load_delta == {"a": -1, "b": 1}


def test_a_new_image_starts_a_rollout_whose_canary_takes_slot_one(store: Store) -> None:
    node(store, "a")
    node(store, "b")
    v1 = web(replicas=2)
    revision(store, v1, 1, RevisionStatus.STABLE)
    runs(store, "a", v1, 1)
    runs(store, "b", v1, 2)
    v2 = web(replicas=2, image="nginx:1.27")
    revision(store, v2, 2, RevisionStatus.PENDING)
    done = decision(store)
    started = {
        "app": "web",
        "revision": 2,
        "from_revision": 1,
        "status": RolloutStatus.CANARY,
        "saved": json.dumps({"1": ["a", 1], "2": ["b", 1]}),
        "total": 2,
        "phase_started_at": NOW,
        "deadline": NOW + 300,  # healthy_deadline: 5m
        "progress_deadline": NOW + 600,  # progress_deadline: 10m
        "created_at": NOW,
        "updated_at": NOW,
        "canary_slot": 1,
        "canary_node": "a",  # every node holds an old replica: the canary replaces one
    }
    assert done.plan == Plan(
        "web",
        cancels=[RUNNING_AGAIN],
        rollouts=[RolloutChange(None, 2, 1, started, ["started (v1 → v2)", "pending → canary"])],
        slots={1: ("a", 2)},
        tasks=[deploy(v2, "a", 1, number=2)],  # the old container stays until v2 passes
    )
    assert done.outcome == Outcome("web", Convergence.BUSY, "1 task(s) queued", queued=1)


def test_an_app_that_runs_as_it_should_is_converged_and_its_plan_is_empty(
    store: Store,
) -> None:
    node(store, "a")
    spec = web()
    revision(store, spec, 1, RevisionStatus.STABLE)
    runs(store, "a", spec, 1)
    done = decision(store)
    assert done.plan == Plan("web", cancels=[RUNNING_AGAIN])
    assert done.plan.last_error is KEEP
    assert done.outcome == Outcome("web", Convergence.CONVERGED)


def test_deciding_writes_nothing_and_applying_writes_the_plan(store: Store) -> None:
    node(store, "a")
    node(store, "b")
    spec = web(replicas=2)
    revision(store, spec, 1, RevisionStatus.PENDING)
    before = store.version
    done = decision(store)
    assert store.version == before
    with store.write() as db:
        apply_plan(db, done.plan)
    assert store.query("SELECT slot, node_id, revision FROM placements ORDER BY slot") == [
        {"slot": 1, "node_id": "a", "revision": None},
        {"slot": 2, "node_id": "b", "revision": None},
    ]
    tasks = store.query("SELECT kind, node_id, slot, revision FROM tasks ORDER BY id")
    assert tasks == [
        {"kind": "deploy", "node_id": "a", "slot": 1, "revision": 1},
        {"kind": "deploy", "node_id": "b", "slot": 2, "revision": 1},
    ]
    again = decision(store)  # the next pass: the deploys are open, nothing is queued twice
    assert again.plan == Plan("web", cancels=[RUNNING_AGAIN])
    assert again.outcome == Outcome("web", Convergence.BUSY, "tasks in flight")
