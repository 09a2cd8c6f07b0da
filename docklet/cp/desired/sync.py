"""Sync: the repository's head commit → validated specs → revisions.

Each sync looks at every spec file at the head, so a missed or out-of-order
notification can never leave the database behind the repository; a file is
parsed only when its blob is new (specs are cached by path and blob id), so
a commit costs what it changed. A file that does not validate is recorded as
a sync error and its app keeps its last good revision; the commit still
counts as synced, so nothing retries a bad commit, and the next commit
supersedes it. One bad file, or one app that fails to apply, never stops the
others.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field

from docklet.common import defaults
from docklet.common.errors import InvalidSpec
from docklet.common.status import EventKind
from docklet.cp.desired import specfile
from docklet.cp.desired.edits import app_name
from docklet.cp.desired.gitrepo import Commit, GitRepo
from docklet.cp.desired.spec import AppSpec, Loc
from docklet.cp.store import apps, events, revisions, secret_values, sync_errors
from docklet.cp.store.db import Store, dumps, get_meta, savepoint, set_meta

log = logging.getLogger(__name__)

SYNC_ATTEMPTS = 50  # heads read while the branch keeps moving, before giving up for now
PARSE_CACHE_SIZE = 4096

# (path, blob id) → the spec, or why it is not one. The name check depends on the
# path, so the path is part of the key.
_parsed: dict[tuple[str, str], AppSpec | str] = {}


@dataclass
class SyncResult:
    commit: str
    new_revisions: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)  # apps the scheduler must look at
    recorded: dict[str, str] = field(default_factory=dict)  # app → the blob now recorded


@dataclass
class Parsed:
    valid: dict[str, AppSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # path → message
    kept: set[str] = field(default_factory=set)  # apps whose file is there but unusable


def _parse_file(path: str, data: bytes) -> AppSpec | str:
    try:
        spec = specfile.load(data, source=path)
    except InvalidSpec as exc:
        return exc.message
    if spec.name != app_name(path):
        return f"{path}: name {spec.name!r} must match the file name ({app_name(path)!r})"
    return spec


def _parse_cached(path: str, oid: str | None, data: bytes) -> AppSpec | str:
    if oid is None:
        return _parse_file(path, data)
    key = (path, oid)
    if key not in _parsed:
        if len(_parsed) >= PARSE_CACHE_SIZE:
            _parsed.clear()  # crude, but bounded; a full re-parse is what every sync used to do
        _parsed[key] = _parse_file(path, data)
    return _parsed[key]


def parse_commit(commit: Commit) -> Parsed:
    """Valid specs by app name, an error message by path for the rest."""
    out = Parsed()
    by_app: dict[str, list[str]] = defaultdict(list)
    for path in sorted(commit.files):
        by_app[app_name(path)].append(path)
    for name, paths in by_app.items():
        if len(paths) > 1:
            # Neither file wins: which one a person meant is not Docklet's guess.
            for path in paths:
                out.errors[path] = (
                    f"{path}: app {name!r} is defined in {len(paths)} files"
                    f" ({', '.join(paths)}); remove all but one"
                )
            out.kept.add(name)
            continue
        (path,) = paths
        result = _parse_cached(path, commit.oids.get(path), commit.files[path])
        if isinstance(result, str):
            out.errors[path] = result
            out.kept.add(name)
        else:
            out.valid[name] = result
    for path, message in commit.problems.items():
        out.errors[path] = message
        if path.endswith(defaults.SPEC_SUFFIXES):  # too large, a symlink: the app keeps its state
            out.kept.add(app_name(path))
    return out


def sync(store: Store, repo: GitRepo, recorded: dict[str, str] | None = None) -> SyncResult | None:
    """Bring the database up to the repository's head; None when already there.

    `recorded` (kept by the caller between syncs): the blob each app's spec
    had when a sync last recorded it. An app whose file is the same blob is
    not looked at again, so a commit costs what it changed, not what the
    repository holds.

    A sync writes only if the commit it read is still the head by then, so a
    sync that read an older head can never undo a newer one; when the head
    moved meanwhile, it syncs the new head instead. (A branch moved back on
    purpose, by a force-push, is the head, and is synced like any other.)
    """
    for _ in range(SYNC_ATTEMPTS):
        head = repo.head()
        # A secret's new value is synced like a commit: the apps that use it get a revision.
        secrets = secret_values.generation(store.reader())
        if head is None or _done(store.reader()) == (head, secrets):
            return None
        commit = repo.read(head)
        plan = _plan(store, commit, parse_commit(commit), recorded or {})
        with store.write() as db:
            if _done(db) == (head, secret_values.generation(db)):
                return None
            if repo.head() != head or secret_values.generation(db) != secrets:
                continue  # superseded while parsing: sync the newer head (or values)
            result = _record(db, commit, plan)
            set_meta(db, SYNCED_SECRETS, secrets)
        if recorded is not None:  # only once the transaction is committed
            recorded.clear()
            recorded.update(result.recorded)
        log.info(
            "sync %s: %d new revision(s), %d removed, %d error(s)",
            head[:8],
            len(result.new_revisions),
            len(result.removed),
            len(result.errors),
        )
        return result
    log.warning("sync: the branch kept moving; the next pass syncs it")
    return None


def recorded_blobs(store: Store, repo: GitRepo) -> dict[str, str]:
    """What a restarted CP's first sync need not record again: app → blob of each spec
    in the synced commit, but those with a sync error."""
    synced = _synced(store)
    if synced is None:
        return {}
    try:
        commit = repo.read(synced)
    except Exception:  # gone (a force-push and gc): the first sync records everything
        log.warning("sync: the synced commit %s cannot be read; re-recording every spec", synced)
        return {}
    failed = {app_name(path) for path in sync_errors.paths(store.reader())}
    return {app_name(p): oid for p, oid in commit.oids.items() if app_name(p) not in failed}


def _synced(store: Store) -> str | None:
    return get_meta(store.reader(), "synced_commit")


SYNCED_SECRETS = "synced_secrets"  # meta: the secrets' generation the last sync read


def _done(db: sqlite3.Connection) -> tuple[str | None, str]:
    """What the last sync brought the database to: a commit, and the secrets' generation."""
    return get_meta(db, "synced_commit"), get_meta(db, SYNCED_SECRETS) or "0"


@dataclass
class Plan:
    """What a sync will write, worked out before its transaction (which stays short)."""

    parsed: Parsed
    apply: dict[str, tuple[AppSpec, str | None]]  # app → its spec and blob, to record
    same: dict[str, str]  # app → blob: recorded already, by an earlier sync
    gone: list[str]  # apps whose file is no longer there


def _plan(store: Store, commit: Commit, parsed: Parsed, recorded: dict[str, str]) -> Plan:
    plan = Plan(parsed, {}, {}, [])
    kept: dict[str, list[int]] | None = None  # secrets' versions, read once if any spec needs
    for name, app_spec in parsed.valid.items():
        path = _path_of(commit, name)
        oid = commit.oids.get(path)
        if app_spec.secret_refs():
            kept = secret_values.versions(store.reader()) if kept is None else kept
            try:
                app_spec = pin_secrets(app_spec, kept, path, commit.files[path])
            except InvalidSpec as exc:  # a missing secret: the app keeps its revision
                parsed.errors[path] = exc.message
                parsed.kept.add(name)
                continue
            # The same bytes with other secret versions is something new to record.
            oid = oid and f"{oid}+" + ",".join(f"{s}:{v}" for _, s, v in app_spec.secret_refs())
        if oid is not None and recorded.get(name) == oid:
            plan.same[name] = oid  # the same bytes as last time: nothing to record
        else:
            plan.apply[name] = (app_spec, oid)
    present = set(parsed.valid) | parsed.kept
    plan.gone = [name for name in apps.not_removed(store.reader()) if name not in present]
    return plan


def _path_of(commit: Commit, name: str) -> str:
    path = f"{defaults.APPS_DIR}/{name}.yaml"
    return path if path in commit.files else f"{defaults.APPS_DIR}/{name}.yml"


def pin_secrets(app_spec: AppSpec, kept: dict[str, list[int]], path: str, data: bytes) -> AppSpec:
    """The spec with each secret's version written in (the newest unless it names one),
    or InvalidSpec naming, with its line, each secret or version that is not there."""
    newest: dict[str, int] = {}
    wrong: list[tuple[Loc, str]] = []
    for loc, name, version in app_spec.secret_refs():
        versions = kept.get(name)
        if not versions:
            wrong.append((loc, f"secret {name!r} does not exist: docklet secret set {name}"))
        elif version is not None and version not in versions:
            have = ", ".join(f"v{v}" for v in versions)
            wrong.append(
                (
                    loc,
                    f"secret {name!r} has no version {version} (kept: {have}); remove"
                    " `version:` to use the newest",
                )
            )
        else:
            newest[name] = versions[-1]
    if wrong:
        lines = [
            f"{path}:{specfile.line_of(data, loc) or 1}: {'.'.join(map(str, loc))}: {text}"
            for loc, text in wrong
        ]
        raise InvalidSpec("; ".join(lines), source=path)
    return app_spec.pinned(newest)


def _record(db: sqlite3.Connection, commit: Commit, plan: Plan) -> SyncResult:
    result = SyncResult(
        commit=commit.sha, errors=dict(plan.parsed.errors), recorded=dict(plan.same)
    )
    for name, (app_spec, oid) in plan.apply.items():
        try:
            with savepoint(db):
                number = _apply(db, app_spec, commit, result.changed)
        except Exception:  # one app that cannot be recorded must not stop the others
            log.exception("sync %s: app %s could not be recorded", commit.sha[:8], name)
            result.errors[f"apps/{name}"] = f"app {name}: internal error recording it (CP log)"
            continue
        if number is not None:
            result.new_revisions[name] = number
        if oid is not None:
            result.recorded[name] = oid
    _record_errors(db, commit, result.errors)
    result.removed = _remove_gone(db, commit, plan.gone)
    result.changed.update(result.removed)
    result.changed.update(app_name(path) for path in result.errors)
    set_meta(db, "synced_commit", commit.sha)
    return result


def _record_errors(db: sqlite3.Connection, commit: Commit, errors: dict[str, str]) -> None:
    """The commit's sync errors replace the last commit's, each also an event.

    The same commit synced again (a secret's new value) tells only the paths it had not."""
    told = set(sync_errors.paths(db)) if get_meta(db, "synced_commit") == commit.sha else set()
    sync_errors.replace(db, commit.sha, errors)
    for path, message in errors.items():
        if path not in told:
            events.record(db, EventKind.SYNC_ERROR, message, app=app_name(path))


def _remove_gone(db: sqlite3.Connection, commit: Commit, gone: list[str]) -> list[str]:
    """Apps whose file is gone are to be removed; returns those that were not already."""
    removed = []
    for name in gone:  # read before the transaction; only sync creates apps
        if apps.mark_removed(db, name, time.time()):
            events.record(
                db, EventKind.APP_REMOVED, f"app {name}: removed by {commit.sha[:8]}", app=name
            )
            removed.append(name)
    return removed


def _apply(
    db: sqlite3.Connection, app_spec: AppSpec, commit: Commit, changed: set[str]
) -> int | None:
    """Record one valid spec; returns the new revision's number if it made one.

    Adds the app to `changed` when anything of it changed.

    A new app runs its first revision at once (there is nothing to protect);
    a new revision of a running app becomes its target, which the rollout
    controller canaries and promotes, or rolls back.
    """
    now = time.time()
    name = app_spec.name
    app = apps.get(db, name)
    if app is None or app["desired"] != app_spec.state:
        changed.add(name)
        _record_desired(db, app_spec, commit, now, new=app is None)
    latest = revisions.latest(db, name)
    if latest is not None and latest["spec_hash"] == app_spec.revision_hash():
        return None
    number = (latest["number"] if latest else 0) + 1
    changed.add(name)
    _record_revision(db, app_spec, commit, number, now)
    first = app is None or app["current_revision"] is None
    apps.set_target(db, name, number, now, first=first)
    events.record(
        db,
        EventKind.REVISION_CREATED,
        f"app {name}: revision v{number} ({commit.sha[:8]})",
        app=name,
    )
    return number


def _record_desired(
    db: sqlite3.Connection, app_spec: AppSpec, commit: Commit, now: float, *, new: bool
) -> None:
    """A new app, or a new desired state (running, stopped) of one."""
    name = app_spec.name
    if new:
        apps.create(db, name, app_spec.state, now)
        events.record(
            db, EventKind.APP_CREATED, f"app {name}: created by {commit.sha[:8]}", app=name
        )
    else:
        apps.set_desired(db, name, app_spec.state, now)
        events.record(
            db, EventKind.APP_DESIRED, f"app {name}: desired state {app_spec.state}", app=name
        )


def _record_revision(
    db: sqlite3.Connection, app_spec: AppSpec, commit: Commit, number: int, now: float
) -> None:
    name = app_spec.name
    # A revision that was waiting to be rolled out is superseded by this one.
    revisions.supersede_waiting(db, name)
    revisions.create(
        db,
        app=name,
        number=number,
        spec=dumps(app_spec.model_dump(mode="json")),
        hashes=(app_spec.revision_hash(), app_spec.container_hash(), app_spec.runtime_hash()),
        commit=(commit.sha, commit.author, commit.message),
        created_at=now,
        # The same container spec ran before (a rollback by commit): the same bytes, exactly.
        image_digest=revisions.pinned_digest(db, name, app_spec.container_hash()),
    )
    uses = [(secret, version) for _, secret, version in app_spec.secret_refs()]
    if uses:  # kept while this revision is: a rollback to it finds its values
        secret_values.record_uses(db, name, number, [(s, v) for s, v in uses if v is not None])
