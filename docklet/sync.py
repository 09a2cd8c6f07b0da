"""Sync: the repository's head commit → validated specs → revisions.

Each sync reads every spec at the head (a few hundred small files at most),
so a missed or out-of-order notification can never leave the database
behind the repository. A file that does not validate is recorded as a sync
error and its app keeps its last good revision; the commit still counts as
synced, so nothing retries a bad commit, and the next commit supersedes it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field

from docklet import spec as specs
from docklet.errors import InvalidSpec
from docklet.gitrepo import Commit, GitRepo
from docklet.spec import AppSpec
from docklet.status import DesiredState, RevisionStatus
from docklet.store import Store, dumps, get_meta, record_event, set_meta

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass
class SyncResult:
    commit: str
    new_revisions: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def parse_commit(commit: Commit) -> tuple[dict[str, AppSpec], dict[str, str]]:
    """Valid specs by app name, and an error message by path for the rest."""
    valid: dict[str, AppSpec] = {}
    errors: dict[str, str] = {}
    for path, data in sorted(commit.files.items()):
        if not path.endswith(SPEC_SUFFIXES):
            continue
        try:
            spec = specs.load(data.decode("utf-8", errors="replace"), source=path)
        except InvalidSpec as exc:
            errors[path] = exc.message
            continue
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if spec.name != stem:
            errors[path] = f"{path}: name {spec.name!r} must match the file name ({stem!r})"
        elif spec.name in valid:
            errors[path] = f"{path}: app {spec.name!r} is defined twice"
        else:
            valid[spec.name] = spec
    return valid, errors


def sync(store: Store, repo: GitRepo, head: str | None = None) -> SyncResult | None:
    """Bring the database up to the repository's head; None when already there.

    `head` is the commit to sync (default: the branch's head now); it is only
    written if it is still the head by then, so a sync that read an older
    head can never undo a newer one. (A branch moved back on purpose, by a
    force-push, is the head, and is synced like any other.)
    """
    head = head or repo.head()
    if head is None:
        return None
    with store.write() as db:
        if get_meta(db, "synced_commit") == head:
            return None
    commit = repo.read(head)
    valid, errors = parse_commit(commit)
    result = SyncResult(commit=head, errors=errors)
    # Apps whose file exists but does not validate keep what they had.
    kept = {path.rsplit("/", 1)[-1].rsplit(".", 1)[0] for path in errors}
    with store.write() as db:
        if get_meta(db, "synced_commit") == head or repo.head() != head:
            return None  # synced meanwhile, or superseded: the newer head is synced instead
        db.execute("DELETE FROM sync_errors")
        for path, message in errors.items():
            db.execute("INSERT INTO sync_errors VALUES (?, ?, ?)", (path, head, message))
            record_event(db, "sync_error", message, app=path.rsplit("/", 1)[-1].split(".")[0])
        for name, app_spec in valid.items():
            number = _apply(db, app_spec, commit)
            if number is not None:
                result.new_revisions[name] = number
        for (name,) in db.execute(
            "SELECT name FROM apps WHERE desired != ?", (DesiredState.REMOVED,)
        ).fetchall():
            if name not in valid and name not in kept:
                db.execute(
                    "UPDATE apps SET desired = ?, updated_at = ? WHERE name = ?",
                    (DesiredState.REMOVED, time.time(), name),
                )
                record_event(
                    db, "app_removed", f"app {name}: removed by {commit.sha[:8]}", app=name
                )
                result.removed.append(name)
        set_meta(db, "synced_commit", head)
    log.info(
        "sync %s: %d new revision(s), %d removed, %d error(s)",
        head[:8],
        len(result.new_revisions),
        len(result.removed),
        len(errors),
    )
    return result


def _apply(db: sqlite3.Connection, app_spec: AppSpec, commit: Commit) -> int | None:
    """Record one valid spec; returns the new revision's number if it made one."""
    now = time.time()
    name = app_spec.name
    app = db.execute("SELECT desired FROM apps WHERE name = ?", (name,)).fetchone()
    if app is None:
        db.execute(
            "INSERT INTO apps (name, desired, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (name, app_spec.state, now, now),
        )
        record_event(db, "app_created", f"app {name}: created by {commit.sha[:8]}", app=name)
    elif app["desired"] != app_spec.state:
        db.execute(
            "UPDATE apps SET desired = ?, updated_at = ? WHERE name = ?",
            (app_spec.state, now, name),
        )
        record_event(db, "app_desired", f"app {name}: desired state {app_spec.state}", app=name)
    latest = db.execute(
        "SELECT number, spec_hash FROM revisions WHERE app = ? ORDER BY number DESC LIMIT 1",
        (name,),
    ).fetchone()
    spec_hash = app_spec.revision_hash()
    if latest is not None and latest["spec_hash"] == spec_hash:
        return None
    number = (latest["number"] if latest else 0) + 1
    db.execute(
        "UPDATE revisions SET status = ? WHERE app = ? AND status = ?",
        (RevisionStatus.SUPERSEDED, name, RevisionStatus.ACTIVE),
    )
    db.execute(
        "INSERT INTO revisions (app, number, spec, spec_hash, container_hash, commit_sha,"
        " author, message, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            number,
            dumps(app_spec.model_dump(mode="json")),
            spec_hash,
            app_spec.container_hash(),
            commit.sha,
            commit.author,
            commit.message,
            RevisionStatus.ACTIVE,
            now,
        ),
    )
    db.execute(
        "UPDATE apps SET current_revision = ?, last_error = NULL, updated_at = ? WHERE name = ?",
        (number, now, name),
    )
    record_event(
        db, "revision_created", f"app {name}: revision v{number} ({commit.sha[:8]})", app=name
    )
    return number
