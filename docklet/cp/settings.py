"""The control plane's settings: one table (see `docklet.common.settings`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, field_validator

from docklet.common import defaults
from docklet.common.settings import Settings


def default_data_dir() -> Path:
    """`/data` inside a container (where the volume is mounted), else the user's data dir."""
    if Path("/.dockerenv").exists():
        return Path(defaults.CONTAINER_DATA_DIR)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "docklet"


class CPConfig(Settings):
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the database and the Git repository live.",
    )
    host: str = Field(defaults.CP_HOST, description="Address to listen on.")
    port: int = Field(defaults.CP_PORT, ge=0, le=65535, description="Port (0 picks a free one).")
    threads: int = Field(
        defaults.CP_THREADS, ge=4, le=512, description="HTTP worker threads (one per request)."
    )
    poll_reserve: int = Field(
        defaults.CP_POLL_RESERVE,
        ge=0,
        le=512,
        description="Threads task long-polls never take (at most half of --threads): the rest"
        " of the API always finds one.",
    )
    overload_wait: float = Field(
        defaults.CP_OVERLOAD_WAIT,
        gt=0,
        le=3600,
        description="Seconds the oldest request may wait for a thread before the CP answers"
        " 503 (Retry-After).",
    )
    heartbeat_interval: float = Field(
        defaults.HEARTBEAT_INTERVAL,
        ge=0.1,
        le=3600,
        description="Seconds between agent heartbeats (told to agents).",
    )
    unknown_after: int = Field(
        defaults.UNKNOWN_AFTER_BEATS,
        ge=1,
        le=100,
        description="Missed heartbeats before a node is unknown.",
    )
    offline_after: int = Field(
        defaults.OFFLINE_AFTER_BEATS,
        ge=2,
        le=1000,
        description="Missed heartbeats before a node is offline and its slots move.",
    )
    heal_delay: float = Field(
        defaults.HEAL_DELAY,
        ge=0,
        le=86400,
        description="Seconds a dead container stays down before it is restarted.",
    )
    task_lease: float = Field(
        defaults.TASK_LEASE, ge=5, le=86400, description="Seconds an agent holds a task unreported."
    )
    task_max_attempts: int = Field(
        defaults.TASK_MAX_ATTEMPTS,
        ge=1,
        le=100,
        description="Leases that may expire before a task fails.",
    )
    long_poll_max: float = Field(
        defaults.LONG_POLL_MAX, ge=0, le=300, description="Longest task long-poll, in seconds."
    )
    reconcile_interval: float = Field(
        defaults.RECONCILE_INTERVAL,
        ge=0.05,
        le=3600,
        description="Seconds between reconcile passes (work also wakes it).",
    )
    events_kept: int = Field(
        defaults.EVENTS_KEPT, ge=1, le=10_000_000, description="Newest events the log keeps."
    )
    max_body: int = Field(
        defaults.MAX_BODY,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Largest request body, in bytes.",
    )
    log_level: str = Field(
        "INFO",
        pattern="^(?i:debug|info|warning|error)$",
        description=("DEBUG, INFO, WARNING or ERROR."),
    )
    log_format: str = Field(
        defaults.LOG_FORMAT,
        pattern="^(?i:text|json)$",
        description="text (a line for people) or json (one object a line, with the app,"
        " revision, rollout, node, task and request id it concerns).",
    )
    bootstrap_window: float = Field(
        defaults.BOOTSTRAP_WINDOW,
        ge=0,
        le=7 * 86400,
        description="Seconds after the first start in which the first login gets an admin"
        " token and the first agent joins without a join token (0: never).",
    )
    public_node_state: bool = Field(
        True,
        description="Let GET /api/state/nodes answer without a token (node names, status,"
        " Docker versions; no secrets).",
    )
    metrics_public: bool = Field(
        defaults.METRICS_PUBLIC,
        description="Let GET /metrics answer without a token (counts and timings; app"
        " names never appear in it). Off: a read token (Prometheus' credentials_file).",
    )
    auth_failures: int = Field(
        defaults.AUTH_FAILURES,
        ge=1,
        le=1_000_000,
        description="Failed credentials one address may send per minute before 429.",
    )
    max_git_body: int = Field(
        defaults.MAX_GIT_BODY,
        ge=64 * 1024,
        le=16 * 1024 * 1024 * 1024,
        description="Largest Git request body (a push), in bytes; the API keeps --max-body.",
    )
    read_timeout: float = Field(
        defaults.CP_READ_TIMEOUT,
        ge=0.5,
        le=3600,
        description="Seconds a client may keep the CP waiting for a request's headers and"
        f" body, in all (one more per {defaults.READ_RATE // 1024} KiB of body); a slower"
        " one is answered 408.",
    )
    reading_share: float = Field(
        defaults.CP_READING_SHARE,
        gt=0,
        le=1,
        description="Share of --threads one address may hold with requests still arriving;"
        " beyond it, its requests that have not arrived whole wait without a thread.",
    )
    event_streams: int = Field(
        defaults.EVENT_STREAMS,
        ge=0,
        le=256,
        description="Event streams (GET /api/events, text/event-stream) open at once; each"
        " holds a thread taken from the long-polls' (never from --poll-reserve).",
    )
    event_stream_time: float = Field(
        defaults.EVENT_STREAM_TIME,
        ge=1,
        le=3600,
        description="Seconds an event stream stays open (the client reconnects).",
    )
    secret_versions_kept: int = Field(
        defaults.SECRET_VERSIONS_KEPT,
        ge=1,
        le=1000,
        description="Versions kept of each secret (`docklet secret set`), besides every"
        " version a revision refers to.",
    )
    ui_session_time: float = Field(
        defaults.UI_SESSION_TIME,
        ge=60,
        le=30 * 86400,
        description="Seconds a dashboard sign-in lasts (from the sign-in, whatever is done"
        " with it); revoking the token ends its sessions at once.",
    )
    log_streams: int = Field(
        defaults.LOG_STREAMS,
        ge=0,
        le=256,
        description="Log streams (docklet logs) open at once; each holds a thread taken from"
        " the long-polls' (never from --poll-reserve).",
    )
    log_streams_per_node: int = Field(
        defaults.LOG_STREAMS_PER_NODE,
        ge=1,
        le=256,
        description="Log streams one node serves at once; one more is answered 429.",
    )
    agent_channels: int = Field(
        defaults.AGENT_CHANNELS,
        ge=1,
        le=100_000,
        description="Agent channels (what a log request reaches a node by) held open at once;"
        " they cost no thread, a socket each.",
    )
    allowed_hosts: str = Field(
        "",
        max_length=4096,
        description="Other names this CP is reached by (comma-separated, e.g. cp.example.com):"
        " a first login or agent join under a name must use one of these, an IP address,"
        " localhost or the listen address.",
    )
    # Upstream mode: follow a branch of the team's own Git host instead of hosting one.
    git_url: str = Field(
        "",
        max_length=2048,
        description="Follow this Git repository (https://, http://, ssh://, git://, file://"
        " or user@host:path) instead of hosting one: the CP mirrors --git-branch, and its"
        " own commits (docklet run, update, ...) are pushed there. Empty: host it (/git/).",
    )
    git_branch: str = Field(
        defaults.GIT_BRANCH,
        pattern=r"^[A-Za-z0-9._/-]{1,200}$",
        description="The upstream branch that is desired state (with --git-url).",
    )
    git_username: str = Field(
        defaults.GIT_USERNAME,
        max_length=200,
        description="The user name a --git-token-file token is sent with (GitLab: oauth2).",
    )
    git_token_file: Path | None = Field(
        None,
        description="A file holding a token for an https:// upstream (re-read at each"
        " fetch and push, so it can be rotated in place).",
    )
    git_ssh_key: Path | None = Field(
        None,
        description="A private key file (a deploy key, mode 0600) for an ssh:// upstream."
        " ssh itself connects, checking the host against --git-known-hosts.",
    )
    git_known_hosts: Path | None = Field(
        None,
        description="The known_hosts file an ssh:// upstream's host key must be in (empty:"
        " ssh's own, ~/.ssh/known_hosts of the user the CP runs as).",
    )
    git_webhook_secret_file: Path | None = Field(
        None,
        description="A file holding the secret forges sign webhooks with (POST"
        " /api/hooks/git: GitHub, Gitea/Forgejo, GitLab); without it webhooks are refused.",
    )
    git_poll: float = Field(
        defaults.GIT_POLL,
        ge=0.1,
        le=86400,
        description="Seconds between fetches of the upstream (jittered), webhooks or not.",
    )
    git_force_push: str = Field(
        defaults.GIT_FORCE_PUSH,
        pattern="^(follow|refuse)$",
        description="A rewritten upstream history (a force-push): refuse (keep deploying"
        " the last followed commit, and say so) or follow (deploy the new head).",
    )
    git_push_outcomes: bool = Field(
        False,
        description="Push deployment outcomes (refs/notes/docklet,"
        " refs/docklet/deployed/<app>) to the upstream too.",
    )
    git_status_token_file: Path | None = Field(
        None,
        description="A file holding a forge API token: each synced commit then gets a"
        " commit status named docklet (pending, success, failure) on the upstream's forge.",
    )
    git_forge: str = Field(
        "",
        pattern="^(|github|gitea|forgejo|gitlab)$",
        description="The upstream's forge, for commit statuses (empty: guessed from the host).",
    )
    git_status_api: str = Field(
        "",
        max_length=2048,
        description="The forge's API root for commit statuses (empty: https://api.github.com"
        " for github.com, else https://HOST/api/v3, /api/v1 or /api/v4 by forge).",
    )

    @field_validator("git_url")
    @classmethod
    def _git_url(cls, url: str) -> str:
        """A URL Git can fetch from, said plainly when it is not one."""
        url = url.strip()
        if url and not re.match(r"^((https?|ssh|git|file)://\S+|[\w.-]+@[\w.-]+:\S+|/\S*)$", url):
            raise ValueError(
                "a Git URL: https://host/org/repo.git, ssh://git@host/org/repo.git,"
                " git@host:org/repo.git, git://host/repo.git or file:///path/repo.git"
            )
        return url

    @property
    def upstream(self) -> bool:
        """Whether the CP follows an upstream repository (--git-url) instead of hosting one."""
        return bool(self.git_url)

    @property
    def long_poll_slots(self) -> int:
        """Task long-polls that may wait at once; more answer at once with what is there."""
        return max(1, self._waiting_threads - self.event_stream_slots - self.log_stream_slots)

    @property
    def event_stream_slots(self) -> int:
        """Event streams that may be open at once: taken from the long-polls' threads, at
        most a quarter of them, so neither the reserve nor the polls are starved."""
        return min(self.event_streams, self._waiting_threads // 4)

    @property
    def log_stream_slots(self) -> int:
        """Log streams that may be open at once: taken from the long-polls' threads like the
        event streams', at most a quarter of them."""
        return min(self.log_streams, self._waiting_threads // 4)

    @property
    def _waiting_threads(self) -> int:
        """Threads requests that wait (long-polls, event and log streams) may hold: all but
        the reserve."""
        return self.threads - min(self.poll_reserve, self.threads // 2)

    @property
    def reading_slots(self) -> int:
        """Threads one address may hold while its requests are still arriving."""
        return max(1, int(self.threads * self.reading_share))

    @property
    def server_max_body(self) -> int:
        """The server's cap on any body: the larger of the API's and Git's own limits."""
        return max(self.max_body, self.max_git_body)

    @property
    def unknown_seconds(self) -> float:
        return self.unknown_after * self.heartbeat_interval

    @property
    def offline_seconds(self) -> float:
        return max(self.offline_after, self.unknown_after + 1) * self.heartbeat_interval

    @property
    def db_path(self) -> Path:
        return self.data_dir / "docklet.db"

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / defaults.SECRET_KEY_FILE

    @property
    def repo_path(self) -> Path:
        return self.data_dir / "repo.git"
