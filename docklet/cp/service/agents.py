"""The agents' side of the API: registration, heartbeats, task polls and reports.

Every call from an agent proves it alive (liveness memory); what it changed
wakes the controller for the apps concerned; work queued for a node reaches
its agent through a long-poll (polls.py) or its next heartbeat's answer.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from typing import Any

from docklet.common.errors import DockletError, Forbidden, Unauthorized
from docklet.common.status import TaskKind, TaskStatus
from docklet.cp.reconcile import rollout
from docklet.cp.service.changes import Changes
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.polls import Polls
from docklet.cp.service.secrets import Secrets, task_refs
from docklet.cp.settings import CPConfig
from docklet.cp.store import nodes, tasks, tokens
from docklet.cp.store.db import Store
from docklet.wire.protocol import Heartbeat, Registration, TaskReport

log = logging.getLogger(__name__)

NOT_ADMITTED = (
    "this agent may not join: give it the cluster's join token as"
    " DOCKLET_JOIN_TOKEN (docklet nodes join-token), or its own node token"
    " in its state file (--state-dir)"
)


class Agents:
    """The /api/agents routes."""

    def __init__(
        self,
        store: Store,
        config: CPConfig,
        cluster_id: str,
        liveness: Liveness,
        polls: Polls,
        changes: Changes,
    ) -> None:
        self.store, self.config, self.cluster_id = store, config, cluster_id
        self.liveness, self.polls, self.changes = liveness, polls, changes
        self.secrets: Secrets | None = None  # ControlPlane sets it: the values leases carry

    def authenticate(self, node_id: str, token: str) -> None:
        nodes.authenticate(self.store, node_id, token)

    def register(
        self,
        reg: Registration,
        *,
        node_token: str = "",
        join_token: str = "",
        window_refused: str = "",
    ) -> dict[str, Any]:
        """A node's token, for an agent that proves it may have one.

        A known engine presents its node token (kept in the agent's state file)
        or the join token; a new engine the join token, or it is the cluster's
        first agent inside the bootstrap window, which closes once the cluster
        is claimed (an API token exists). `window_refused` says why this request
        may not use the window (the HTTP layer's Host check) even while it is
        open. The engine id alone, which GET /api/state/nodes shows, is never enough.
        """
        with self.store.write() as db:
            if not self._admits(db, reg.engine_id, node_token, join_token, window_refused):
                raise Unauthorized(NOT_ADMITTED)
            tokens.close_node_window(db)
            node_id, token, again = nodes.register(db, reg)
            if again:  # the agent that held this node's leases is gone
                tasks.requeue_node(db, node_id)
        self.changes.wake(None if again else ())  # a new node: only apps waiting for one care
        return {
            "node_id": node_id,
            "token": token,
            "cluster_id": self.cluster_id,
            "heartbeat_interval": self.config.heartbeat_interval,
        }

    def _admits(
        self,
        db: sqlite3.Connection,
        engine_id: str,
        node_token: str,
        join_token: str,
        window_refused: str = "",
    ) -> bool:
        """Whether the agent proved it may have this engine's node token (in that order:
        the bootstrap window is claimed only when nothing else admits it)."""
        known = nodes.by_engine(db, engine_id)
        if (
            known is not None
            and node_token
            and nodes.token_matches(known["token_hash"], node_token)
        ):
            return True
        if tokens.join_token_ok(self.config.data_dir, join_token):
            return True
        if known is not None:
            return False
        if window_refused and tokens.node_window_open(db, self.config.bootstrap_window):
            raise Forbidden(window_refused)
        return tokens.claim_node(db, self.config.bootstrap_window, engine_id)

    def heartbeat(self, node_id: str, beat: Heartbeat) -> bool:
        """Record a heartbeat; True when tasks wait for this node (its agent polls at once).

        One that changes nothing but the time is kept in memory, not written
        (see liveness.py). Any other is written at once, as it may wake the scheduler.
        """
        if nodes.unchanged(self.store.reader(), node_id, beat):
            self.liveness.heard(node_id)
        else:
            with self.store.write() as db:
                node_changed, apps_changed = nodes.heartbeat(db, node_id, beat)
            if node_changed:
                self.changes.wake()
            elif apps_changed:
                self.changes.wake(apps_changed)
        return tasks.waiting(self.store, node_id)

    def report(self, node_id: str, task_id: int, report: TaskReport) -> dict[str, Any]:
        if report.error and self.secrets is not None:  # Docker's words may echo the env
            report = report.model_copy(update={"error": self.secrets.scrub(task_id, report.error)})
        with self.store.write() as db:
            outcome = tasks.report(db, node_id, task_id, report, self.config.task_lease)
            if report.image_digest and report.status == TaskStatus.DONE and outcome["revision"]:
                rollout.record_digest(db, outcome["app"], outcome["revision"], report.image_digest)
        # A report proves the agent alive as a heartbeat does: one whose heartbeats wait
        # behind a busy Docker must not have its node declared unknown meanwhile.
        self.liveness.heard(node_id)
        if "app" in outcome:  # a task ended (a lease renewal changes nothing to schedule)
            self.changes.wake([outcome["app"]])
        return {"status": outcome["status"]}

    def poll_tasks(self, node_id: str, token: str, wait: float, limit: int = 10) -> dict[str, Any]:
        """An agent's task poll: its tasks, and, when it found no long-poll slot,
        `poll_after`: how long its agent waits before it long-polls again (it
        asks at once when a heartbeat says tasks wait for it)."""
        self.liveness.heard(node_id)  # an authenticated poll proves the agent alive too
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
        """This node's tasks, waiting up to `wait` seconds; and whether it found no slot."""
        wait = min(wait, self.config.long_poll_max)
        lease = functools.partial(self._lease, node_id, nodes.hash_token(token), limit)
        if wait <= 0:
            return lease(), False
        return self.polls.wait(node_id, wait, lease)

    def _lease(self, node_id: str, token_hash: str, limit: int) -> list[dict[str, Any]]:
        # Most polls find nothing: they find out with a read, not a write transaction.
        if not tasks.waiting(self.store, node_id, token_hash):
            return []
        with self.store.write() as db:
            leased = tasks.lease(db, node_id, token_hash, self.config.task_lease, limit)
        return [task for task in leased if self._with_secrets(node_id, task)]

    def _with_secrets(self, node_id: str, task: dict[str, Any]) -> bool:
        """Put the values of the secrets a deploy uses into its lease answer, the only
        place they leave the CP; False (the task failed) when they cannot be opened."""
        refs = task_refs(task["payload"] or {}) if task["kind"] == TaskKind.DEPLOY else []
        if not refs or self.secrets is None:
            return True
        try:
            task["secret_values"] = self.secrets.values(refs)
            return True
        except DockletError as exc:  # this task fails; the node's other tasks go on
            log.error("task %s: its secrets cannot be delivered: %s", task["id"], exc.message)
            failed = TaskReport(
                status=TaskStatus.FAILED,
                lease_token=task["lease_token"],
                error=f"its secrets cannot be delivered: {exc.message}",
            )
            self.report(node_id, task["id"], failed)
            return False
