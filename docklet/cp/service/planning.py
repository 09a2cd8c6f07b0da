"""Plan before apply: what spec files would change, decided as a pass would, written nowhere.

`POST /api/plan` reads the files as a push would be read (desired/proposal:
sync's own parsing, so the file:line errors are the same), pins each secret's
version as sync pins it (a secret that does not exist is that file's error),
works out per app the revision it would become, and runs the reconcile layer's `decide` on the
current world with that revision in it: a `Draft` whose `Plan` is read for
what it says (a rollout or not, which slots on which nodes) and never
applied. `POST /api/apply` commits one file through the same checks, with
`Apps.commit`, as `docklet update` commits.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from docklet.common.errors import BadRequest, InvalidSpec
from docklet.common.status import DesiredState, RevisionStatus, TaskKind
from docklet.cp.desired import proposal
from docklet.cp.desired.edits import app_name, paths_of
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.desired.proposal import Proposal
from docklet.cp.desired.spec import AppSpec
from docklet.cp.desired.sync import Parsed, pin_secrets
from docklet.cp.reconcile.decide import decide
from docklet.cp.reconcile.plan import KEEP, Plan
from docklet.cp.reconcile.world import World
from docklet.cp.service.apps import Apps
from docklet.cp.service.tokens import Author
from docklet.cp.service.views import Views
from docklet.cp.settings import CPConfig
from docklet.cp.store import apps as app_rows
from docklet.cp.store import placements, revisions, secret_values
from docklet.cp.store import views as stored
from docklet.cp.store import world as reads
from docklet.cp.store.db import Store


class Change(StrEnum):
    """What a proposal does to one app (the `change` of its entry)."""

    CREATE = "create"
    UPDATE = "update"
    REMOVE = "remove"
    NONE = "none"


@dataclass(frozen=True)
class Ground:
    """What every dry run of one plan shares, read once: the nodes, and slots per node."""

    nodes: Mapping[str, sqlite3.Row]
    load: Counter[str]


# A task's kind as a slot's entry says it; a rollout's other slots are replaced in turn.
_ACTIONS = {TaskKind.DEPLOY: "deploy", TaskKind.REMOVE: "remove", TaskKind.STOP: "stop"}


class Planning:
    """`POST /api/plan` and `POST /api/apply`."""

    def __init__(
        self, store: Store, repo: GitRepo, config: CPConfig, apps: Apps, views: Views
    ) -> None:
        self.store, self.repo, self.config = store, repo, config
        self.apps, self.views = apps, views

    def plan(self, files: Any, complete: bool) -> dict[str, Any]:
        """The validation result and, per app, what would change and how it would be applied."""
        prop = proposal.propose(self.repo, proposal.checked_files(files, complete), complete)
        prop = self._pinned(prop)
        problems = prop.problems()
        reader = self.store.reader()
        # Read once a plan, as a pass reads them once: each dry run adds what it placed.
        ground = Ground(reads.nodes(reader), placements.per_node(reader))
        entries = [self._entry(name, spec, ground) for name, spec in prop.specs().items()]
        entries += [self._removal(name, ground) for name in self._removed(prop)]
        return {
            "valid": not problems,
            "errors": [p.as_dict() for p in problems],
            "apps": sorted(entries, key=lambda e: e["app"]),
        }

    def apply(self, path: Any, text: Any, author: Author | str) -> dict[str, Any]:
        """Commit one spec file you wrote, if it validates (else 400 with its file:line
        errors, nothing committed); the app's view after, as `update` answers."""
        if not isinstance(path, str) or not isinstance(text, str):
            raise BadRequest(
                "'file' is the spec file's path in the repository (\"apps/web.yaml\") and"
                " 'text' its content"
            )
        path, data = next(iter(proposal.checked_files({path: text}).items()))
        assert data is not None  # text is a string
        name = app_name(path)
        self._refuse_missing_secrets(path, data)
        sha = self.apps.commit(proposal.put(path, data), f"Apply {path}", author, name)
        return {"app": name, "commit": sha, **(self.views.find(name) or {})}

    def _pinned(self, prop: Proposal) -> Proposal:
        """The proposal with its secrets' versions written in, as sync writes them into a
        revision: else an app that uses a secret would differ from its own revision. A
        secret or version not kept is its file's error, word for word what a sync says,
        and the app is left out as sync leaves it (it keeps its revision)."""
        users = {n: s for n, s in prop.specs().items() if s.secret_refs()}
        if not users:
            return prop
        kept = secret_values.versions(self.store.reader())
        parsed = prop.parsed
        out = Parsed(dict(parsed.valid), dict(parsed.errors), set(parsed.kept))
        for name, spec in users.items():
            (path,) = paths_of(prop.commit.files, name)  # one file, or it would not be valid
            try:
                out.valid[name] = pin_secrets(spec, kept, path, prop.commit.files[path])
            except InvalidSpec as exc:
                out.errors[path] = exc.message
                out.kept.add(name)
                del out.valid[name]
        return dataclasses.replace(prop, parsed=out)

    def _refuse_missing_secrets(self, path: str, data: bytes) -> None:
        """A file naming a secret or version not kept is refused before it is committed, as
        `update` refuses one (a push is taken: Git is the truth, and its sync says so)."""
        prop = proposal.propose(self.repo, {path: data}, False)
        errors = self._pinned(prop).parsed.errors
        missing = [errors[p] for p in sorted(errors) if errors[p] != prop.parsed.errors.get(p)]
        if missing:
            raise InvalidSpec("; ".join(missing) + "; nothing was committed", source=path)

    # -- one app ------------------------------------------------------------------

    def _removed(self, prop: Proposal) -> list[str]:
        if not prop.complete:
            return []
        present = prop.present()
        return [n for n in app_rows.not_removed(self.store.reader()) if n not in present]

    def _entry(self, name: str, spec: AppSpec, ground: Ground) -> dict[str, Any]:
        """One app's entry: sync's test for a new revision (the hash of the latest), then,
        if anything changes, the fields and the next pass's plan. Unchanged apps cost two
        reads, so a whole tree of them is cheap."""
        reader = self.store.reader()
        row = app_rows.get(reader, name)
        latest = revisions.latest(reader, name)
        new_revision = latest is None or latest["spec_hash"] != spec.revision_hash()
        number = (latest["number"] if latest else 0) + (1 if new_revision else 0)
        gone = row is None or row["desired"] == DesiredState.REMOVED
        if not gone and not new_revision and row["desired"] == spec.state:
            return _entry(name, Change.NONE, [], number)
        old = None if gone else self._old_spec(name, row, latest)
        entry = _entry(name, Change.CREATE if gone else Change.UPDATE, [], number)
        entry["fields"] = proposal.fields(old, spec)
        supposed = _supposed_app(name, row, spec.state, number, new_revision, gone)
        extra = {(name, number): _supposed_revision(reader, name, number, spec)}
        decided = self._dry_run(supposed, extra if new_revision else {}, ground)
        entry.update(_effects(decided, name, number, spec, self._placed(name)))
        return entry

    def _removal(self, name: str, ground: Ground) -> dict[str, Any]:
        row = app_rows.get(self.store.reader(), name)
        entry = _entry(name, Change.REMOVE, [], None)
        if row is None:  # forgotten meanwhile: nothing left to remove
            return entry
        decided = self._dry_run({**dict(row), "desired": DesiredState.REMOVED}, {}, ground)
        entry.update(_effects(decided, name, None, None, self._placed(name)))
        return entry

    def _old_spec(
        self, name: str, row: sqlite3.Row | None, latest: sqlite3.Row | None
    ) -> AppSpec | None:
        """The app's latest revision with its desired state: what the fields are compared to."""
        if row is None or latest is None:
            return None
        stored_row = stored.revision(self.store, name, latest["number"])
        if stored_row is None:
            return None
        data = json.loads(stored_row["spec"])
        state = row["desired"] if row["desired"] != DesiredState.REMOVED else data.get("state")
        return AppSpec.model_validate({**data, "state": state})

    def _placed(self, name: str) -> dict[int, tuple[str, int | None]]:
        return dict(placements.of_apps(self.store.reader(), [name]).get(name, {}))

    def _dry_run(
        self, app: dict[str, Any], extra: dict[tuple[str, int], Any], ground: Ground
    ) -> Plan:
        """The plan the next pass would make for `app` (as the proposal leaves it), on the
        world as it is now: read on a reader connection, decided, never applied."""
        reader = self.store.reader()
        world = World.read(reader, self.config, time.time(), [app["name"]], ground.nodes)
        world = dataclasses.replace(world, revisions={**world.revisions, **extra})
        decision = decide(world, ground.load, app)
        ground.load.update(decision.load_delta)  # the next app spreads around this one
        return decision.plan


def _entry(
    name: str, change: str, fields: list[dict[str, Any]], number: int | None
) -> dict[str, Any]:
    return {
        "app": name,
        "change": change,
        "fields": fields,
        "revision": f"v{number}" if number else None,
        "rollout": False,
        "nodes": [],
        "slots": [],
        "note": None,
    }


def _supposed_app(
    name: str,
    row: sqlite3.Row | None,
    state: str,
    number: int,
    new_revision: bool,
    gone: bool,
) -> dict[str, Any]:
    """The app's row as sync would leave it after recording the proposal (sync._apply)."""
    now = time.time()
    app = dict(row) if row is not None else {"name": name, "current_revision": None}
    app.update(desired=state, updated_at=now, created_at=app.get("created_at", now))
    app.setdefault("last_error", None)
    app.setdefault("target_revision", None)
    if new_revision:
        app.update(target_revision=number, last_error=None)
        if gone or app["current_revision"] is None:
            app["current_revision"] = number  # a first revision runs at once
    return app


def _supposed_revision(
    db: sqlite3.Connection, name: str, number: int, spec: AppSpec
) -> dict[str, Any]:
    """The revision row sync would write for `spec` (sync._record_revision), unwritten."""
    container_hash = spec.container_hash()
    return {
        "app": name,
        "number": number,
        "spec": json.dumps(spec.model_dump(mode="json")),
        "spec_hash": spec.revision_hash(),
        "container_hash": container_hash,
        "runtime_hash": spec.runtime_hash(),
        "image_digest": revisions.pinned_digest(db, name, container_hash),
        "status": RevisionStatus.PENDING,
        "reason": None,
        "forced": 0,
        "commit_sha": "proposed",
        "author": "",
        "message": "",
        "created_at": time.time(),
    }


def _effects(
    plan: Plan,
    name: str,
    number: int | None,
    spec: AppSpec | None,
    placed: dict[int, tuple[str, int | None]],
) -> dict[str, Any]:
    """What the plan of the next pass says: a rollout or not, the slots and nodes it touches."""
    started = next((c for c in plan.rollouts if c.id is None), None)
    slots: dict[int, tuple[str | None, str]] = {}
    for slot, where in plan.slots.items():
        if where is None and slot in placed:
            slots[slot] = (placed[slot][0], "remove")
        elif where is not None:
            slots[slot] = (where[0], "deploy")
    for task in plan.tasks:
        if task.slot is not None:
            slots[task.slot] = (task.node_id, _ACTIONS.get(task.kind, str(task.kind)))
    nodes = {node for node, _ in slots.values() if node}
    if started is not None and spec is not None:
        slots.update(_rollout_slots(started.fields, spec, placed))
        # A canary beside the replicas moves its slot: the old container there goes too.
        nodes |= {node for node, _ in placed.values()} | {n for n, _ in slots.values() if n}
    note = plan.last_error if plan.last_error is not KEEP else None
    held = plan.revisions.get(number) if number is not None else None
    if held is not None and held.status == RevisionStatus.HELD:
        note = held.reason
    return {
        "rollout": started is not None,
        "nodes": sorted(nodes),
        "slots": [
            {"slot": s, "node": node, "action": action}
            for s, (node, action) in sorted(slots.items())
        ],
        "note": note,
    }


def _rollout_slots(
    fields: dict[str, Any], spec: AppSpec, placed: dict[int, tuple[str, int | None]]
) -> dict[int, tuple[str | None, str]]:
    """A rollout replaces every slot in turn (the canary first); slots beyond the new
    replicas go once it is stable. A slot not placed yet is placed when it is promoted."""
    out: dict[int, tuple[str | None, str]] = {}
    for slot in range(1, spec.replicas + 1):
        node = placed[slot][0] if slot in placed else None
        out[slot] = (node, "replace" if slot in placed else "deploy")
    for slot in placed:
        if slot > spec.replicas:
            out[slot] = (placed[slot][0], "remove")
    canary = fields.get("canary_slot")
    if canary is not None:
        out[canary] = (fields.get("canary_node"), "canary")
    return out
