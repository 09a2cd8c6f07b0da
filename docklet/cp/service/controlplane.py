"""The control plane's composition root: the store, the repository and one service per resource.

`ControlPlane` builds them and shares them; it holds no verb of its own. The
HTTP layer calls the services (`cp.apps`, `cp.views`, `cp.agents`,
`cp.tokens`); the controller loop (cp/controller.py) runs `cp.passes` when
`cp.changes` rings. The process entry point is `server.py`.
"""

from __future__ import annotations

import secrets
import time

from docklet.cp.desired import hooks
from docklet.cp.desired.forge import Forge
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.desired.upstream import Upstream
from docklet.cp.reconcile import rollout
from docklet.cp.service.agents import Agents
from docklet.cp.service.apps import Apps
from docklet.cp.service.changes import Changes
from docklet.cp.service.channels import Channels
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.logstreams import LogStreams
from docklet.cp.service.metrics import Metrics
from docklet.cp.service.passes import Passes
from docklet.cp.service.planning import Planning
from docklet.cp.service.polls import Polls
from docklet.cp.service.secrets import Secrets
from docklet.cp.service.sessions import Sessions
from docklet.cp.service.stream import EventStreams
from docklet.cp.service.tokens import Tokens
from docklet.cp.service.views import Views
from docklet.cp.settings import CPConfig
from docklet.cp.store import tokens
from docklet.cp.store.db import Store, get_meta, set_meta


class ControlPlane:
    """Everything the API and the controller loop share, built once per process."""

    def __init__(self, config: CPConfig) -> None:
        started_at = time.time()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_path)
        self.repo = GitRepo(config.repo_path)
        hooks.install(config.repo_path)  # pushes with invalid specs are refused
        self.cluster_id = _start(self.store, started_at)
        # Upstream mode (--git-url): the repository follows the team's Git host, and the
        # CP's own commits are pushed there (desired/upstream.py).
        self.upstream = Upstream(self.repo, config) if config.upstream else None
        self.liveness = Liveness(self.store, started_at)
        self.polls = Polls(config.long_poll_slots)
        self.changes = Changes()
        self.passes = Passes(self.store, self.repo, config, self.liveness, self.polls, self.changes)
        self.views = Views(self.store, self.repo, config, self.liveness, self.polls)
        self.passes.upstream = self.upstream
        if self.upstream is not None and config.git_status_token_file is not None:
            self.passes.forge = Forge(config)  # commit statuses on the upstream's forge
        self.apps = Apps(self.store, self.repo, self.passes, self.views)
        # POST /api/plan and /api/apply: spec files checked, decided, never applied by a plan.
        self.planning = Planning(self.store, self.repo, config, self.apps, self.views)
        # Secret values, sealed at rest; opened only for the lease of a task that uses them.
        self.secrets = Secrets(self.store, config, self.passes)
        self.agents = Agents(
            self.store, config, self.cluster_id, self.liveness, self.polls, self.changes
        )
        self.agents.secrets = self.secrets
        self.tokens = Tokens(self.store, config)
        # GET /metrics: a registry of this control plane's own (a process may hold several).
        self.metrics = Metrics(self.store, config, self.views, self.polls, self.liveness)
        self.passes.observe = self.metrics.passed
        self.streams = EventStreams(self.store, config)  # GET /api/events, followed
        # The dashboard's sign-ins (docklet/cp/ui/session.py): API tokens, then cookies.
        self.sessions = Sessions(self.store, config, self.tokens, self.metrics, self.liveness)
        # The log relay: every agent's channel, and the callers' log streams over them.
        self.channels = Channels(config.agent_channels, config.max_body)
        self.logstreams = LogStreams(self.store, config, self.liveness, self.channels)
        self.channels.receive = self.logstreams.take  # batches written up the channels
        self.metrics.gauge(
            "docklet_log_streams", "Log streams open (docklet logs).", self.logstreams.open_now
        )
        self.metrics.gauge("docklet_agent_channels", "Agent channels open.", self.channels.open_now)
        self._config = config

    @property
    def config(self) -> CPConfig:
        return self._config

    @config.setter
    def config(self, config: CPConfig) -> None:
        """New settings (a test's, or the server's address) reach every service at once."""
        self._config = config
        for service in (
            self.passes,
            self.planning,
            self.secrets,
            self.views,
            self.agents,
            self.tokens,
            self.streams,
            self.metrics,
            self.sessions,
            self.logstreams,
        ):
            service.config = config
        self.channels.limit = config.agent_channels


def _start(store: Store, started_at: float) -> str:
    """The cluster's id, made on the first start; the bootstrap windows count from that
    start, and rollout deadlines that fell due while the CP was down get that time back."""
    with store.write() as db:
        cluster_id = get_meta(db, "cluster_id") or secrets.token_hex(8)
        set_meta(db, "cluster_id", cluster_id)
        tokens.first_start(db, started_at)
        last_pass = get_meta(db, "last_pass_at")
        if last_pass:
            rollout.resume(db, started_at - float(last_pass))
            set_meta(db, "last_pass_at", repr(started_at))  # given back once
    return cluster_id
