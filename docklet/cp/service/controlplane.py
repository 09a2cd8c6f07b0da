"""The control plane: the one façade the HTTP layer calls, and the controller loop.

`ControlPlane` owns the store, the repository and the loop that syncs and
reconciles. Every verb the API offers is a method here; the API only parses
requests and shapes answers. The process entry point is `server.py`.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from docklet.common.errors import Conflict, NotFound, Unauthorized
from docklet.common.status import Access, RevisionStatus, RolloutStatus, TaskStatus, TokenScope
from docklet.cp.desired import edits as apps
from docklet.cp.desired import hooks, spec
from docklet.cp.desired.edits import Edit
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.desired.spec import SpecState
from docklet.cp.desired.sync import SyncResult, recorded_blobs, sync
from docklet.cp.http import auth
from docklet.cp.reconcile import rollout, scheduler
from docklet.cp.service.views import app_views, node_statuses, nodes_view, revisions_view
from docklet.cp.settings import CPConfig
from docklet.cp.store import events, nodes, tasks, tokens
from docklet.cp.store.db import Store, get_meta, set_meta
from docklet.wire.protocol import Heartbeat, Registration, TaskReport

log = logging.getLogger(__name__)

POLL_SLICE = 5.0  # a waiting long-poll re-checks at least this often
# A pass over every app this often, whatever was reported changed: a safety net
# (most passes look only at the apps something changed, and those with work in flight).
FULL_PASS_EVERY = 30.0
GATE_SLACK = 0.05  # seconds after a health gate's wait ends that its pass comes
FLUSH_EVERY = 1.0  # heartbeats kept in memory are written this often
FLUSH_BATCH = 100  # nodes' heartbeat times written in one transaction


class _Poll:
    """One waiting long-poll: woken when work is queued, or replaced by its node's next poll."""

    __slots__ = ("event", "replaced")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.replaced = False


class ControlPlane:
    """Everything the API and the controller loop share."""

    def __init__(self, config: CPConfig) -> None:
        self.config = config
        # Liveness counts only heartbeats this process could have received.
        self.started_at = time.time()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_path)
        self.repo = GitRepo(config.repo_path)
        hooks.install(config.repo_path)  # pushes with invalid specs are refused
        with self.store.write() as db:
            self.cluster_id = get_meta(db, "cluster_id") or secrets.token_hex(8)
            set_meta(db, "cluster_id", self.cluster_id)
            tokens.first_start(db, self.started_at)  # the bootstrap windows count from here
            # Deadlines that fell due while the CP was down get that time back.
            last_pass = get_meta(db, "last_pass_at")
            if last_pass:
                rollout.resume(db, self.started_at - float(last_pass))
                set_meta(db, "last_pass_at", repr(self.started_at))  # given back once
        self._wake = threading.Event()
        # What the controller's next pass looks at: the apps a commit, report or
        # heartbeat changed (None: every app), and those the last pass left busy.
        self._changed: set[str] | None = None
        self._busy: set[str] = set()
        self._changed_lock = threading.Lock()
        self._next_full_pass = 0.0
        self._gate_at = math.inf  # when the soonest health gate's wait ends (time.time())
        # Waiting long-polls, one per node at most, and the slots they may take: a
        # long-poll holds a server thread, and the rest of the API must always find one.
        self._polls: dict[str, _Poll] = {}
        self._polls_lock = threading.Lock()
        self._poll_slots = threading.BoundedSemaphore(config.long_poll_slots)
        # The latest heartbeat of each node, kept in memory: a heartbeat that changes
        # nothing else writes nothing, and the controller loop writes these in one batch.
        self._seen: dict[str, float] = {}
        self._seen_dirty: dict[str, float] = {}
        self._seen_lock = threading.Lock()
        self.overload: Any = None  # the server's Overload middleware, once one serves this CP
        # One sync at a time: a sync that read an older head must never write
        # after one that read a newer head (it would undo the newer commit).
        self._sync_lock = threading.Lock()
        # app → blob last synced (see sync.sync), from the database's synced commit on.
        self._synced_blobs = recorded_blobs(self.store, self.repo)
        # The list of every app, by brief or not: (store version, node statuses, views).
        self._view_cache: dict[bool, tuple[int, dict[str, str], list[dict[str, Any]]]] = {}
        self.limiter = auth.FailureLimiter(config.auth_failures)

    # -- desired state: each write is a commit, visible when the call returns ----

    def commit(self, edit: Edit, message: str, author: str, app: str | None = None) -> str | None:
        """Commit an edit, then sync and schedule it before returning.

        Read-your-writes: the sync brings the database at least to this
        commit (to a later head if others committed meanwhile), so the
        caller's next read sees its change.
        """
        sha = self.repo.commit(edit, message, author)
        self.sync()
        # The edited app (every app if None); the controller looks at any other the sync changed.
        self.reconcile(None if app is None else {app})
        return sha

    def create_app(self, data: dict[str, Any], author: str) -> dict[str, Any]:
        app_spec = spec.validate(data, source="request")
        sha = self.commit(
            apps.create(app_spec),
            f"Create app {app_spec.name} ({app_spec.image})",
            author,
            app_spec.name,
        )
        return {"app": app_spec.name, "commit": sha, **self.app(app_spec.name)}

    def rollback(self, name: str, to: int | None, author: str) -> dict[str, Any]:
        """Commit an older revision's spec back: a person's decision, recorded in Git."""
        self.app(name)
        row = self._rollback_target(name, to)
        old = json.loads(row["spec"])

        def restore(data: dict[str, Any]) -> dict[str, Any]:
            return {**old, "state": data.get("state", old.get("state", "running"))}

        message = f"Roll back app {name} to v{row['number']} ({row['commit_sha'][:8]})"
        return self._edit(name, apps.change(name, restore), message, author)

    def _rollback_target(self, name: str, to: int | None) -> dict[str, Any]:
        if to is not None:
            row = self.store.one("SELECT * FROM revisions WHERE app = ? AND number = ?", (name, to))
            if row is None:
                raise NotFound(f"app {name!r} has no revision v{to} (docklet history {name})")
            return row
        row = self.store.one(
            # The stable revision itself while another is being (or failed to be) rolled
            # out; otherwise the one that ran before it.
            "SELECT r.* FROM revisions r JOIN apps a ON a.name = r.app WHERE r.app = ?"
            " AND (r.number < a.current_revision OR (r.number = a.current_revision"
            " AND a.target_revision != a.current_revision)) AND r.status IN (?, ?)"
            " ORDER BY r.number DESC LIMIT 1",
            (name, RevisionStatus.STABLE, RevisionStatus.REPLACED),
        )
        if row is None:
            raise Conflict(f"app {name!r} has no earlier stable revision to roll back to")
        return row

    def retry(self, name: str) -> dict[str, Any]:
        """Roll out the held or failed target revision again, as a person asked."""
        self.app(name)
        with self.store.write() as db:
            if not rollout.retry(db, name):
                raise Conflict(f"app {name!r} has no held or failed revision to retry")
        self.reconcile({name})
        return {"app": name, "commit": None, **self.app(name)}

    def rollouts(self, name: str) -> list[dict[str, Any]]:
        self.app(name)
        rows = self.store.query(
            "SELECT * FROM rollouts WHERE app = ? ORDER BY id DESC LIMIT 100", (name,)
        )
        return [v for v in map(rollout.view, rows) if v]

    def rollout(self, name: str, rollout_id: int) -> dict[str, Any]:
        if not 0 < rollout_id < 2**63:
            raise NotFound(f"app {name!r} has no rollout {rollout_id}")
        row = self.store.one("SELECT * FROM rollouts WHERE app = ? AND id = ?", (name, rollout_id))
        if row is None:
            raise NotFound(f"app {name!r} has no rollout {rollout_id}")
        return rollout.view(row) or {}

    def update_app(self, name: str, fields: dict[str, Any], author: str) -> dict[str, Any]:
        # Values stay out of the message (env may hold secrets); the image is what people scan for.
        said = [f"image={fields['image']}" if k == "image" else k for k in fields]
        return self._edit(
            name, apps.update(name, fields), f"Update app {name}: {', '.join(said)}"[:200], author
        )

    def set_state(self, name: str, state: SpecState, author: str) -> dict[str, Any]:
        verb = "Start" if state == SpecState.RUNNING else "Stop"
        return self._edit(name, apps.set_state(name, state), f"{verb} app {name}", author)

    def remove_app(self, name: str, author: str) -> dict[str, Any]:
        return self._edit(name, apps.remove(name), f"Remove app {name}", author)

    def _edit(self, name: str, edit: Edit, message: str, author: str) -> dict[str, Any]:
        sha = self.commit(edit, message, author, name)
        # A removed app with nothing left to clean up is already forgotten.
        views = self._views(name)
        return {"app": name, "commit": sha, **(views[0] if views else {})}

    def sync(self) -> SyncResult | None:
        with self._sync_lock:
            result = sync(self.store, self.repo, self._synced_blobs)
        if result is not None:
            self.wake(result.changed)
        return result

    def reconcile(self, apps: Collection[str] | None = None) -> int:
        """A reconcile pass over `apps` (every app if None); returns the tasks it queued."""
        return self._reconcile(apps).queued

    def _reconcile(self, apps: Collection[str] | None) -> scheduler.Pass:
        done = scheduler.reconcile(
            self.store, self.config, started_at=self.deaf_until(), seen=self.last_seen(), apps=apps
        )
        if done.queued:
            self._wake_polls()
        self._record_outcomes()
        return done

    def _controller_pass(self) -> None:
        """Look at the apps something changed, and those with work in flight; now and
        then (and after a node came or went), at every app."""
        with self._changed_lock:
            changed, self._changed = self._changed, set()
        now = time.monotonic()
        apps: set[str] | None = None
        if changed is None or now >= self._next_full_pass:
            self._next_full_pass = now + FULL_PASS_EVERY
        else:
            apps = changed | self._busy
        try:
            done = self._reconcile(apps)
        except Exception:
            with self._changed_lock:
                self._changed = None  # what this pass missed, the next one looks at
            raise
        self._busy = done.busy
        self._gate_at = done.wake_at
        log.debug(
            "pass: %d app(s) looked at (%s), %d queued, %d busy",
            done.looked_at,
            "all" if apps is None else "changed or busy",
            done.queued,
            len(done.busy),
        )

    def _record_outcomes(self) -> None:
        """Write finished rollouts' outcomes to Git, outside any database transaction."""
        for r in rollout.unrecorded(self.store.reader()):
            status = RolloutStatus(r["status"])
            deployed = {
                RolloutStatus.STABLE: r["to_commit"],
                RolloutStatus.ROLLED_BACK: r["from_commit"],
            }.get(status)
            note = None
            if status in (
                RolloutStatus.ROLLED_BACK,
                RolloutStatus.ROLLBACK_FAILED,
                RolloutStatus.FAILED,
            ):
                text = f"docklet: {r['app']} v{r['revision']} {status}: {r['reason']}\n"
                note = (r["to_commit"], text)
            try:
                self.repo.record_outcome(r["app"], deployed, note)
            except Exception:  # Git is where people look; the database stays the truth
                log.exception("rollout %s: could not record its outcome in Git", r["id"])
            with self.store.write() as db:
                rollout.mark_recorded(db, r["id"])

    def wake(self, apps: Iterable[str] | None = None) -> None:
        """Ask the controller loop for a pass now, over these apps (all of them if None)."""
        with self._changed_lock:
            if apps is None:
                self._changed = None
            elif self._changed is not None:
                self._changed.update(apps)
        self._wake.set()

    # -- reads -----------------------------------------------------------------

    def apps(self, brief: bool = False) -> list[dict[str, Any]]:
        return self._views(brief=brief)

    def app(self, name: str) -> dict[str, Any]:
        views = self._views(name)
        if not views:
            raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
        return views[0]

    def _views(self, name: str | None = None, brief: bool = False) -> list[dict[str, Any]]:
        """App views as of now: liveness from this process's start and its in-memory heartbeats.

        The list of every app is kept while nothing it was made from changed: no
        write moved the store's version, and every node's status is as it was.
        (A thousand agents' `ps` every few seconds each would otherwise rebuild it
        from ten thousand containers every time.)
        """
        deaf, seen = self.deaf_until(), self.last_seen()
        if name is not None:
            return app_views(self.store, self.config, name, deaf, seen, brief=brief)
        version = self.store.version  # before reading: a write meanwhile makes this stale
        statuses = node_statuses(self.store, self.config, deaf, seen)
        cached = self._view_cache.get(brief)
        if cached is not None and cached[0] == version and cached[1] == statuses:
            return cached[2]
        views = app_views(self.store, self.config, None, deaf, seen, brief=brief, statuses=statuses)
        self._view_cache[brief] = (version, statuses, views)
        return views

    def nodes(self) -> list[dict[str, Any]]:
        return nodes_view(self.store, self.config, self.deaf_until(), self.last_seen())

    def revisions(self, name: str) -> list[dict[str, Any]]:
        self.app(name)
        return revisions_view(self.store, name)

    def events(self, app: str | None, limit: int) -> list[dict[str, Any]]:
        return events.recent(self.store, app, limit)

    def sync_state(self) -> dict[str, Any]:
        row = self.store.one("SELECT value FROM meta WHERE key = 'synced_commit'")
        errors = self.store.query("SELECT path, message FROM sync_errors ORDER BY path")
        return {"head": self.repo.head(), "synced": row["value"] if row else None, "errors": errors}

    def healthy(self) -> bool:
        return self.store.one("SELECT 1 AS ok") is not None

    # -- agents ------------------------------------------------------------------

    def authenticate(self, node_id: str, token: str) -> None:
        nodes.authenticate(self.store, node_id, token)

    def register(
        self, reg: Registration, *, node_token: str = "", join_token: str = ""
    ) -> dict[str, Any]:
        """A node's token, for an agent that proves it may have one.

        A known engine presents its node token (kept in the agent's state file)
        or the join token; a new engine the join token, or it is the cluster's
        first agent inside the bootstrap window. The engine id alone, which
        GET /api/state/nodes shows, is never enough.
        """
        with self.store.write() as db:
            known_hash = db.execute(
                "SELECT token_hash FROM nodes WHERE engine_id = ?", (reg.engine_id,)
            ).fetchone()
            admitted = (
                (known_hash and node_token and nodes.token_matches(known_hash[0], node_token))
                or tokens.join_token_ok(self.config.data_dir, join_token)
                or (
                    not known_hash
                    and tokens.claim_node(db, self.config.bootstrap_window, reg.engine_id)
                )
            )
            if not admitted:
                raise Unauthorized(
                    "this agent may not join: give it the cluster's join token as"
                    " DOCKLET_JOIN_TOKEN (docklet nodes join-token), or its own node token"
                    " in its state file (--state-dir)"
                )
            tokens.close_node_window(db)
            node_id, token, known = nodes.register(db, reg)
            if known:  # the agent that held this node's leases is gone
                tasks.requeue_node(db, node_id)
        self.wake(None if known else ())  # a new node: only apps waiting for one care
        return {
            "node_id": node_id,
            "token": token,
            "cluster_id": self.cluster_id,
            "heartbeat_interval": self.config.heartbeat_interval,
        }

    def heartbeat(self, node_id: str, beat: Heartbeat) -> bool:
        """Record a heartbeat; True when tasks wait for this node (its agent polls at once).

        One that changes nothing but the time is kept in memory, not written:
        `flush_seen` writes those in one batch, and liveness and the node views
        read the memory. Any other is written at once, as it may wake the scheduler.
        """
        if nodes.unchanged(self.store.reader(), node_id, beat):
            self._heard(node_id)
        else:
            with self.store.write() as db:
                node_changed, apps_changed = nodes.heartbeat(db, node_id, beat)
            if node_changed:
                self.wake()
            elif apps_changed:
                self.wake(apps_changed)
        return tasks.waiting(self.store, node_id)

    def deaf_until(self) -> float:
        """Until when this CP could not hear every heartbeat: its start, or its latest 503.

        Liveness counts a node's silence only from then: a CP that was down, or
        so busy it turned requests away, must not declare nodes dead and move
        their work (more work, while it is already overloaded).
        """
        refused = self.overload.refused_at if self.overload is not None else 0.0
        return max(self.started_at, refused)

    def _heard(self, node_id: str) -> None:
        """The node's agent spoke: kept in memory, written by `flush_seen`."""
        with self._seen_lock:
            self._seen[node_id] = self._seen_dirty[node_id] = time.time()

    def last_seen(self) -> dict[str, float]:
        """Each node's latest heartbeat kept in memory (newer than the stored one, or equal)."""
        with self._seen_lock:
            return dict(self._seen)

    def flush_seen(self) -> int:
        """Write the heartbeats kept in memory since the last flush, FLUSH_BATCH nodes a
        transaction (a thousand nodes' worth at once would hold the writer too long)."""
        with self._seen_lock:
            dirty, self._seen_dirty = self._seen_dirty, {}
        batch = list(dirty.items())
        for start in range(0, len(batch), FLUSH_BATCH):
            chunk = dict(batch[start : start + FLUSH_BATCH])
            try:
                with self.store.write(quiet=True) as db:  # views read these from memory
                    nodes.flush_seen(db, chunk)
            except Exception:  # kept for the next flush, unless a newer beat came meanwhile
                with self._seen_lock:
                    self._seen_dirty = {**dict(batch[start:]), **self._seen_dirty}
                raise
        return len(dirty)

    def report(self, node_id: str, task_id: int, report: TaskReport) -> dict[str, Any]:
        with self.store.write() as db:
            outcome = tasks.report(db, node_id, task_id, report, self.config.task_lease)
            if report.image_digest and report.status == TaskStatus.DONE and outcome["revision"]:
                rollout.record_digest(db, outcome["app"], outcome["revision"], report.image_digest)
        # A report proves the agent alive as a heartbeat does: one whose heartbeats wait
        # behind a busy Docker must not have its node declared unknown meanwhile.
        self._heard(node_id)
        if "app" in outcome:  # a task ended (a lease renewal changes nothing to schedule)
            self.wake([outcome["app"]])
        return {"status": outcome["status"]}

    def poll_tasks(self, node_id: str, token: str, wait: float, limit: int = 10) -> dict[str, Any]:
        """An agent's task poll: its tasks, and, when it found no long-poll slot,
        `poll_after`: how long its agent waits before it long-polls again (it
        asks at once when a heartbeat says tasks wait for it)."""
        self._heard(node_id)  # an authenticated poll proves the agent alive too
        leased, slotless = self._poll(node_id, token, wait, limit)
        answer: dict[str, Any] = {"tasks": leased}
        if slotless:
            answer["poll_after"] = self.config.long_poll_max
        return answer

    def lease_tasks(
        self, node_id: str, token: str, wait: float, limit: int = 10
    ) -> list[dict[str, Any]]:
        """This node's tasks; waits up to `wait` seconds for some to appear."""
        return self._poll(node_id, token, wait, limit)[0]

    def _poll(
        self, node_id: str, token: str, wait: float, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """This node's tasks, waiting up to `wait` seconds; and whether it found no slot.

        A waiting poll holds a server thread, so at most `long_poll_slots` wait
        at once: a poll that finds none free answers at once with what is
        already there, and its agent leaves long-polling to others for a
        while, learning of new tasks from its heartbeats instead. A node has
        one waiting poll at most: its next poll makes the older one answer at
        once, empty.
        """
        wait = min(wait, self.config.long_poll_max)
        token_hash = nodes.hash_token(token)
        if wait <= 0:
            return self._lease(node_id, token_hash, limit), False
        with self._polls_lock:
            older = self._polls.pop(node_id, None)
        if older is not None:  # it answers now, and gives its slot back
            older.replaced = True
            older.event.set()
        if not self._poll_slots.acquire(timeout=1.0 if older else 0):
            return self._lease(node_id, token_hash, limit), True
        poll = _Poll()
        try:
            with self._polls_lock:
                displaced = self._polls.get(node_id)
                self._polls[node_id] = poll
            if displaced is not None:  # a poll from the same node that raced this one
                displaced.replaced = True
                displaced.event.set()
            deadline = time.monotonic() + wait
            while True:
                poll.event.clear()  # before leasing: work queued from here on wakes it
                leased = self._lease(node_id, token_hash, limit)
                remaining = deadline - time.monotonic()
                if leased or remaining <= 0:
                    return leased, False
                poll.event.wait(min(remaining, POLL_SLICE))
                if poll.replaced:
                    return [], False
        finally:
            with self._polls_lock:
                if self._polls.get(node_id) is poll:
                    del self._polls[node_id]
            self._poll_slots.release()

    def limit_long_polls(self, slots: int) -> None:
        """Size the long-poll slots to the server that serves this CP (before it serves)."""
        self._poll_slots = threading.BoundedSemaphore(max(1, slots))

    def _lease(self, node_id: str, token_hash: str, limit: int) -> list[dict[str, Any]]:
        # Most polls find nothing: they find out with a read, not a write transaction.
        if not tasks.waiting(self.store, node_id, token_hash):
            return []
        with self.store.write() as db:
            return tasks.lease(db, node_id, token_hash, self.config.task_lease, limit)

    def _wake_polls(self) -> None:
        """Tasks were queued: every waiting long-poll looks for its own."""
        with self._polls_lock:
            waiting = list(self._polls.values())
        for poll in waiting:
            poll.event.set()

    def metrics(self) -> dict[str, Any]:
        """Load figures with no secret in them: what benchmarks and operators watch."""
        with self._polls_lock:
            waiting = len(self._polls)
        return {
            "long_polls": waiting,
            "long_poll_slots": self.config.long_poll_slots,
            "longest_write_ms": round(self.store.longest_write * 1000, 3),
            "slow_writes": [
                {"at": round(at, 3), "ms": round(took * 1000, 1), "in": where}
                for at, took, where in list(self.store.slow_writes)
            ],
            "overloaded": self.overload.refused if self.overload is not None else 0,
        }

    # -- credentials ------------------------------------------------------------------

    def authenticate_user(self, secret: str, access: Access) -> auth.Caller:
        row = tokens.lookup(self.store, secret)
        caller = auth.user(row, secret, access)
        now = time.time()
        if row is not None and tokens.needs_touch(row, now):
            with self.store.write() as db:
                tokens.touch(db, caller.name, now)
        return caller

    def bootstrap_windows(self) -> dict[str, Any]:
        return tokens.windows(self.store, self.config.bootstrap_window)

    def bootstrap_admin(self, name: str, by: str) -> str:
        with self.store.write() as db:
            return tokens.claim_admin(db, name, self.config.bootstrap_window, by)

    def tokens(self) -> list[dict[str, Any]]:
        return tokens.listing(self.store)

    def create_token(self, name: Any, scope: TokenScope, by: str) -> str:
        with self.store.write() as db:
            return tokens.create(db, tokens.check_name(name), scope, by)

    def revoke_token(self, name: str, by: str) -> None:
        with self.store.write() as db:
            tokens.revoke(db, name, by)

    def join_token(self, *, rotate: bool = False) -> str:
        secret = tokens.join_token(self.config.data_dir, rotate=rotate)
        if rotate:
            log.warning("join token rotated: agents joining from now on need the new one")
        return secret

    def announce_bootstrap(self, url: str) -> None:
        """Say loudly, at start, which bootstrap window is open and until when."""
        state = self.bootstrap_windows()
        for who, what in (
            ("admin", f"the first `docklet login --cp {url}` gets an admin token"),
            ("nodes", "the first agent joins without a join token"),
        ):
            if state[who]["open"]:
                left = state[who]["closes_at"] - time.time()
                log.warning("BOOTSTRAP window open for %.0f more seconds: %s", left, what)

    # -- the controller loop -------------------------------------------------------

    def run_controller(self, stop: threading.Event, max_iterations: int | None = None) -> None:
        """Sync and reconcile until `stop` is set: on every wake, or every interval.

        Each stage is isolated: a sync that fails (a broken repository) still
        lets the reconcile pass expire leases and schedule, and the reverse.
        Between passes, heartbeats kept in memory are written every second.
        """
        done = 0
        next_pass = 0.0
        while not stop.is_set() and (max_iterations is None or done < max_iterations):
            try:
                self.flush_seen()
            except Exception:  # kept in memory, and tried again in a second
                log.exception("controller: writing heartbeat times failed")
            if time.monotonic() >= next_pass:
                for stage in (self.sync, self._controller_pass):
                    try:
                        stage()
                    except Exception:
                        log.exception(
                            "controller: %s failed; retrying in %.1fs",
                            stage.__name__,
                            self.config.reconcile_interval,
                        )
                done += 1
                # The next pass at the interval, or when a health gate's wait ends.
                gate = max(0.0, self._gate_at - time.time()) + GATE_SLACK
                next_pass = time.monotonic() + min(self.config.reconcile_interval, gate)
                if max_iterations is not None and done >= max_iterations:
                    break
            left = next_pass - time.monotonic()
            if self._wake.wait(max(0.0, min(left, FLUSH_EVERY))):
                next_pass = 0.0  # woken: a pass now
            self._wake.clear()

    def watch_repo(self, stop: threading.Event) -> None:
        """Wake the controller when a `git push` moves a ref in the bare repository."""
        from watchfiles import watch

        repo = self.config.repo_path

        def is_ref(_change: object, path: str) -> bool:
            # Branches only: the notes and deployed refs Docklet writes must not wake it.
            relative = path[len(str(repo)) + 1 :]
            return relative.startswith("refs/heads/") or relative == "packed-refs"

        try:
            for _ in watch(
                repo, watch_filter=is_ref, stop_event=stop, raise_interrupt=False, debounce=200
            ):
                self.wake(())  # the pass's sync says which apps the push changed
        except Exception:  # the interval pass still syncs; this only makes it prompt
            log.exception(
                "repo watcher stopped; new pushes sync within %.0fs", self.config.reconcile_interval
            )
