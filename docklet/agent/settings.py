"""The agent's settings: one table (see `docklet.common.settings`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from docklet.common import defaults
from docklet.common.settings import Settings
from docklet.wire.client import check_url


def default_agent_state_dir() -> Path:
    """Where the agent keeps its node token: a volume path in a container, else XDG state."""
    if Path("/.dockerenv").exists():
        return Path(defaults.AGENT_STATE_DIR)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "docklet-agent"


class AgentConfig(Settings):
    cp: str = Field(defaults.CP_URL, min_length=1, description="The control plane's URL.")
    node_name: str | None = Field(None, description="Node name. Default: the Docker host's name.")
    heartbeat_interval: float | None = Field(
        None, ge=0.1, le=3600, description="Seconds between heartbeats. Default: what the CP says."
    )
    concurrency: int = Field(
        defaults.AGENT_CONCURRENCY,
        ge=1,
        le=256,
        description="Tasks run at once (one at a time per container).",
    )
    poll_wait: float = Field(
        defaults.LONG_POLL_WAIT, ge=0, le=300, description="Seconds a task long-poll waits."
    )
    docker_timeout: float = Field(
        defaults.DOCKER_TIMEOUT, ge=1, le=3600, description="Seconds one Docker API call may take."
    )
    retry_max: float = Field(
        defaults.RETRY_MAX,
        ge=0.1,
        le=3600,
        description="Longest backoff while the CP or Docker does not answer.",
    )
    log_streams: int = Field(
        defaults.AGENT_LOG_STREAMS,
        ge=1,
        le=256,
        description="Log streams (docklet logs) this agent follows at once; beyond, it says no.",
    )
    log_stream_time: float = Field(
        defaults.AGENT_LOG_STREAM_TIME,
        ge=1,
        le=86_400,
        description="Seconds one log stream is followed at most (the caller then asks again).",
    )
    log_batch_every: float = Field(
        defaults.LOG_BATCH_EVERY,
        ge=0.01,
        le=10,
        description="Seconds between two batches of a log stream's lines while lines keep"
        " coming (a line after a quiet while goes at once): latency against CP load.",
    )
    join_token: str | None = Field(
        None,
        description="The cluster's join token (docklet nodes join-token); set it in the"
        " environment, not on the command line.",
    )
    state_dir: Path = Field(
        default_factory=default_agent_state_dir,
        description="Where the agent keeps its node token across restarts.",
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

    @field_validator("cp")
    @classmethod
    def _a_usable_url(cls, value: str) -> str:
        # Caught at start, as a usage error naming --cp, not as a traceback at the first call.
        problem = check_url(value)
        if problem is not None:
            raise ValueError(problem)
        return value
