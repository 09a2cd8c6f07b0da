"""The two passes that converge the cluster: sync (Git → store) and reconcile (store → tasks).

A commit runs both before its call returns (read-your-writes); the controller
loop (cp/controller.py) runs them on every wake-up and every interval. A
reconcile pass that queued work wakes the agents' long-polls; finished
rollouts' outcomes are then written to Git, outside any database transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from docklet.common.errors import DockletError, UpstreamUnavailable
from docklet.common.status import EventKind, RolloutStatus
from docklet.cp.desired.forge import Forge, State
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.desired.sync import SyncResult, recorded_blobs, sync
from docklet.cp.desired.upstream import Fetched, Upstream
from docklet.cp.reconcile import rollout, scheduler
from docklet.cp.service.changes import Changes
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.polls import Polls
from docklet.cp.settings import CPConfig
from docklet.cp.store import events, sync_errors
from docklet.cp.store import views as stored
from docklet.cp.store.db import Store, get_meta

log = logging.getLogger(__name__)

# The outcomes worth a note on the rolled-out commit: what went wrong, in Git's words.
NOTED = (RolloutStatus.ROLLED_BACK, RolloutStatus.ROLLBACK_FAILED, RolloutStatus.FAILED)

# Told each stage ("sync" or "reconcile"), its seconds and its result: GET /metrics.
PassObserver = Callable[[str, float, object], None]


def _unobserved(stage: str, seconds: float, result: object) -> None:
    return None


class Passes:
    """Sync and reconcile, with what each needs of this process's memory."""

    def __init__(
        self,
        store: Store,
        repo: GitRepo,
        config: CPConfig,
        liveness: Liveness,
        polls: Polls,
        changes: Changes,
    ) -> None:
        self.store, self.repo, self.config = store, repo, config
        self.liveness, self.polls, self.changes = liveness, polls, changes
        # One sync at a time: a sync that read an older head must never write
        # after one that read a newer head (it would undo the newer commit).
        self._sync_lock = threading.Lock()
        # app → blob last synced (see sync.sync), from the database's synced commit on.
        self.synced_blobs = recorded_blobs(store, repo)
        self.observe: PassObserver = _unobserved  # ControlPlane sets its Metrics' own
        self.upstream: Upstream | None = None  # upstream mode: ControlPlane sets it
        self._told_rewrite: str | None = None  # the rewritten upstream head last reported
        self._told_unreachable: str | None = None  # the last fetch error reported
        self.forge: Forge | None = None  # commit statuses (--git-status-token-file)

    def sync(self) -> SyncResult | None:
        with self._sync_lock:
            started = time.perf_counter()
            result = sync(self.store, self.repo, self.synced_blobs)
            self.observe("sync", time.perf_counter() - started, result)
        if result is not None:
            self.changes.wake(result.changed)
            self._status_of_sync(result)
        return result

    def _status_of_sync(self, result: SyncResult) -> None:
        """The synced commit's status on the forge: invalid, rolling out, or deployed."""
        if self.forge is None:
            return
        names = ", ".join(f"{app} v{n}" for app, n in sorted(result.new_revisions.items()))
        if result.errors:
            first = result.errors[min(result.errors)]
            told = f"{len(result.errors)} problem(s), not deployed: {first}"
            self.forge.report(result.commit, State.FAILURE, told)
        elif any(n > 1 for n in result.new_revisions.values()):  # a v1 deploys without a rollout
            self.forge.report(result.commit, State.PENDING, f"rolling out {names}")
        else:
            self.forge.report(result.commit, State.SUCCESS, f"synced: {names or 'no new revision'}")

    def follow(self) -> Fetched | None:
        """Upstream mode: fetch the upstream branch and sync what it brought at once.

        A rewritten history (a force-push) is reported once per new head, followed
        or not: an event and a log line; refused, also a sync error (`docklet ps`,
        GET /api/state/sync) until the branch moves on from the deployed commit.
        An upstream that cannot be fetched is a sync error too (once per message,
        and an event), until a fetch works again.
        """
        if self.upstream is None:
            return None
        try:
            fetched = self.upstream.fetch()
        except UpstreamUnavailable as exc:
            if exc.message != self._told_unreachable:
                self._told_unreachable = exc.message
                self._note_upstream(exc.message, event=True)
            raise
        if self._told_unreachable is not None:  # reachable again: the note goes
            self._told_unreachable = None
            self._told_rewrite = None  # a refused rewrite it replaced is noted again below
            self._note_upstream(None, event=False)
        if fetched.rewritten and fetched.fetched != self._told_rewrite:
            self._told_rewrite = fetched.fetched
            self._report_rewrite(fetched)
        if fetched.moved:
            self.sync()
        return fetched

    def _report_rewrite(self, fetched: Fetched) -> None:
        assert self.upstream is not None
        if fetched.moved:
            told = (
                f"upstream {self.upstream.shown} {self.upstream.branch} was rewritten (a"
                f" force-push) from {(fetched.before or '')[:8]} to {(fetched.fetched or '')[:8]};"
                " followed (--git-force-push follow)"
            )
        else:
            told = self.upstream.diverged_message(fetched)
        log.warning("%s", told)
        # Refused, it stays a sync error until a sync of a later head replaces the errors.
        self._note_upstream(None if fetched.moved else told, event=True, told=told)

    def _note_upstream(self, note: str | None, *, event: bool, told: str | None = None) -> None:
        """The sync error named `upstream` (`docklet ps`, GET /api/state/sync): set to `note`,
        or removed when None; with `event`, also an event of `told` (else of `note`)."""
        with self.store.write() as db:
            if event:
                events.record(db, EventKind.SYNC_ERROR, told or note or "")
            kept = {e["path"]: e["message"] for e in stored.sync_errors(self.store)}
            if note is None and "upstream" not in kept:
                return
            kept.pop("upstream", None)
            synced = get_meta(db, "synced_commit") or ""
            sync_errors.replace(db, synced, {**kept, **({"upstream": note} if note else {})})

    def reconcile(self, apps: Collection[str] | None = None) -> int:
        """A reconcile pass over `apps` (every app if None); returns the tasks it queued."""
        return self.run(apps).queued

    def run(self, apps: Collection[str] | None) -> scheduler.Pass:
        """A reconcile pass over `apps` (every app if None), as liveness stands now."""
        started = time.perf_counter()
        done = scheduler.reconcile(
            self.store,
            self.config,
            started_at=self.liveness.deaf_until(),
            seen=self.liveness.last_seen(),
            apps=apps,
        )
        self.observe("reconcile", time.perf_counter() - started, done)
        if done.queued:
            self.polls.wake()
        self._record_outcomes()
        return done

    def _record_outcomes(self) -> None:
        """Write finished rollouts' outcomes to Git, outside any database transaction."""
        for r in rollout.unrecorded(self.store.reader()):
            deployed, note = outcome(r)
            try:
                self.repo.record_outcome(r["app"], deployed, note)
            except Exception:  # Git is where people look; the database stays the truth
                log.exception("rollout %s: could not record its outcome in Git", r["id"])
            self._push_outcome(r["app"])
            self._status_of_outcome(r)
            with self.store.write() as db:
                rollout.mark_recorded(db, r["id"])

    def _status_of_outcome(self, row: Any) -> None:
        """A finished rollout's outcome as its commit's status: stable, or why it was not."""
        status = RolloutStatus(row["status"])
        if self.forge is None or not row["to_commit"]:
            return
        what = f"{row['app']} v{row['revision']}"
        if status == RolloutStatus.STABLE:
            self.forge.report(row["to_commit"], State.SUCCESS, f"{what} is stable")
        elif status in NOTED:
            told = f"{what} {status}: {row['reason']}"
            self.forge.report(row["to_commit"], State.FAILURE, told)

    def _push_outcome(self, app: str) -> None:
        """With --git-push-outcomes, the record goes upstream too; a failure is only logged."""
        if self.upstream is None or not self.config.git_push_outcomes:
            return
        try:
            self.upstream.push_outcomes(app)
        except DockletError as exc:
            log.warning("app %s: outcome not pushed upstream: %s", app, exc.message)


def outcome(row: Any) -> tuple[str | None, tuple[str, str] | None]:
    """What a finished rollout leaves in Git: the commit that now runs (None: unchanged),
    and a note on the rolled-out commit when it went wrong."""
    status = RolloutStatus(row["status"])
    deployed = {
        RolloutStatus.STABLE: row["to_commit"],
        RolloutStatus.ROLLED_BACK: row["from_commit"],
    }.get(status)
    note = None
    if status in NOTED:
        text = f"docklet: {row['app']} v{row['revision']} {status}: {row['reason']}\n"
        note = (row["to_commit"], text)
    return deployed, note
