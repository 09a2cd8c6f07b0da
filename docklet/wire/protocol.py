"""The agent protocol, typed in both directions.

What agents send (registration, heartbeat, task report) is validated at the
CP's door, so a wrong type, a missing field or an absurd number is a 400 that
says which field, never a 500. What the CP sends back (registration reply,
leased tasks) is validated by the agent the same way, so an answer it cannot
use is one clear error, not a KeyError deep in a loop. Unknown fields are
ignored in both directions: a newer peer may send more.

The container labels Docklet puts on every container it makes are defined
here too: they are part of the protocol between the agent, Docker and the CP.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from docklet.common.errors import BadRequest
from docklet.common.status import TaskKind, TaskStatus

Id = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=10_000)]
Count = Annotated[int, Field(ge=0, le=2**31)]
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31)]
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
Time = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # epoch seconds, or a duration
NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,62}$"
MAX_CONTAINERS = 5_000  # per heartbeat: far above one engine's practical load, far below limits
MAX_INFO_KEYS = 64
SAMPLED = 6  # ObservedContainer.fingerprint()'s items that every sample tells
MAX_EVIDENCE = 4000  # characters of a health check's output or a container's last log lines


class Label(StrEnum):
    """The labels on every container Docklet makes; the CP reads them back from heartbeats."""

    CLUSTER = "docklet.cluster"
    APP = "docklet.app"
    SLOT = "docklet.slot"
    REVISION = "docklet.revision"
    TASK = "docklet.task"
    NODE = "docklet.node"
    SPEC_HASH = "docklet.spec-hash"


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# -- agent → CP ----------------------------------------------------------------


class Registration(Wire):
    engine_id: Id
    name: Annotated[str, Field(pattern=NODE_NAME)]
    info: dict[Annotated[str, Field(max_length=64)], str | int | float | bool | None] = Field(
        default_factory=dict, max_length=MAX_INFO_KEYS
    )

    @field_validator("info")
    @classmethod
    def _finite(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if isinstance(item, float) and not abs(item) < float("inf"):
                raise ValueError(f"info.{key}: numbers must be finite")
            if isinstance(item, str) and len(item) > 1000:
                raise ValueError(f"info.{key}: at most 1000 characters")
        return value


class ObservedContainer(Wire):
    """One container as an agent saw it in Docker."""

    id: Id
    name: Id
    image: Text = ""
    state: Annotated[str, Field(min_length=1, max_length=32)]
    health: Annotated[str, Field(max_length=32)] | None = None
    exit_code: ExitCode | None = None
    restarts: Count = 0
    labels: dict[str, Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=256
    )
    # From `docker inspect`, which agents run only for young or failing containers:
    # what the rollout health gate judges by, and the evidence a failed canary leaves.
    health_log: Annotated[str, Field(max_length=MAX_EVIDENCE)] | None = None
    logs: Annotated[str, Field(max_length=MAX_EVIDENCE)] | None = None
    # Evidence that outlives a sample (None in a sample without an inspect: the CP keeps
    # what the last inspect said): the start of its current or last run; when it last
    # stopped (a restart leaves it set); the exit code and the length of that run, when
    # known; and when the agent read all this (its own clock), with `restarts`.
    started_at: Time | None = None
    finished_at: Time | None = None
    last_exit_code: ExitCode | None = None
    last_run: Time | None = None  # seconds
    inspected_at: Time | None = None

    @property
    def app(self) -> str | None:
        return self.labels.get(Label.APP)

    def label_number(self, key: Label) -> int | None:
        """A numeric docklet label (slot, revision), or None when absent or not a number."""
        value = self.labels.get(key, "")
        return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else None

    @property
    def inspected(self) -> bool:
        """Whether this sample carries what only an inspect tells (its times and restarts)."""
        return self.started_at is not None

    def fingerprint(self) -> tuple[Any, ...]:
        """What the CP stores of it: equal fingerprints need no write. The first SAMPLED
        items every sample tells; the rest only an inspect (see `inspected`)."""
        return (
            self.id,
            self.state,
            self.health,
            self.exit_code,
            self.health_log,
            self.logs,
            self.restarts,
            self.started_at,
            self.finished_at,
            self.last_exit_code,
            self.last_run,
            self.inspected_at,
        )


class Heartbeat(Wire):
    docker_ok: bool = True
    docker_error: Text | None = None
    containers: list[ObservedContainer] | None = Field(None, max_length=MAX_CONTAINERS)
    report_seq: Count = 0


class TaskReport(Wire):
    status: TaskStatus
    # What `secrets.token_urlsafe` makes: the CP compares it in constant time, which only
    # ASCII text allows (schemathesis found a 500 here).
    lease_token: Annotated[str, Field(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")] = ""
    seq: Count | None = None
    error: Text | None = None
    container_id: Id | None = None
    container: ObservedContainer | None = None
    # What a deploy ran: `repo@sha256:…` when the registry gave a digest, else the image id.
    image_digest: Annotated[str, Field(max_length=300)] | None = None

    @field_validator("status")
    @classmethod
    def _reportable(cls, value: TaskStatus) -> TaskStatus:
        if not value.is_reportable:
            raise ValueError("must be running, done or failed")
        return value


# -- CP → agent ----------------------------------------------------------------


class RegistrationReply(Wire):
    node_id: Id
    token: Id
    cluster_id: Id
    heartbeat_interval: Seconds


class SecretRef(Wire):
    """An env value that is a secret: the lease's `secret_values` carry its value."""

    secret: Id
    version: Annotated[int, Field(ge=1)]


class SecretFile(Wire):
    """A secret the agent writes as a file (mode 0400) into the container before it starts."""

    name: Id
    version: Annotated[int, Field(ge=1)]
    target: Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/")]


class SecretValue(Wire):
    """A secret's value, in the lease answer of the one task that uses it, and nowhere else."""

    name: Id
    version: Annotated[int, Field(ge=1)]
    # repr=False: a task printed in a traceback or a log line shows no value.
    value: Annotated[str, Field(max_length=64 * 1024, repr=False)]


class ContainerSpec(Wire):
    """What a deploy task carries: the container part of an app spec, and its hash."""

    image: Annotated[str, Field(min_length=1, max_length=255)]
    container_hash: Annotated[str, Field(min_length=1, max_length=64)]
    command: list[str] | str | None = None
    env: dict[str, str | SecretRef] = Field(default_factory=dict)
    secrets: list[SecretFile] = Field(default_factory=list, max_length=100)
    ports: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    restart: str = "unless-stopped"
    stop_grace_period: float | str = "10s"
    healthcheck: dict[str, Any] | None = None
    pull: str = "missing"
    # Containers of the same slot on this node to stop (not remove) right before the
    # new one starts, after it is pulled and created: stop-first without ever
    # stopping the old one for an image that is missing or a spec Docker refuses.
    # If the new one then fails to start, they are started again.
    replaces: list[Id] = Field(default_factory=list, max_length=10)


class LeasedTask(Wire):
    """One task handed to an agent under a lease; its report must carry `lease_token`."""

    id: Annotated[int, Field(gt=0)]
    kind: TaskKind
    app: Id
    container: Id
    slot: int | None = None
    revision: int | None = None
    payload: ContainerSpec | None = None  # deploy tasks only
    lease_token: Id
    lease_seconds: Seconds
    # The values of the secrets the payload names (by name and version), for this lease only.
    secret_values: list[SecretValue] = Field(default_factory=list, max_length=1100)

    def secrets(self) -> dict[tuple[str, int], str]:
        """(secret, version) → value, of what this lease carries."""
        return {(s.name, s.version): s.value for s in self.secret_values}

    @field_validator("payload", mode="before")
    @classmethod
    def _no_payload(cls, value: Any) -> Any:
        return value or None  # stop and remove tasks carry an empty payload

    @property
    def slot_key(self) -> str:
        """Tasks with the same key touch the same container: they run one at a time, in order."""
        return self.container


class TaskBatch(Wire):
    tasks: list[LeasedTask] = Field(default_factory=list)
    # No long-poll slot was free: long-poll again after this long (heartbeats say
    # meanwhile whether tasks wait).
    poll_after: Seconds | None = None


# The log relay (docs/architecture.md "The log relay") -------------------------
# CP → agent: frames on the agent's channel (GET /api/agents/{id}/channel), or the same
# requests in a heartbeat's answer when the node has no channel open. Agent → CP: batches
# of lines (POST /api/agents/{id}/logs/{stream}). Both sides bound by these numbers.

LOG_BATCH_LINES = 1_000  # lines in one batch
LOG_BATCH_BYTES = 1024 * 1024  # text in one batch: well within MAX_BODY
LOG_LINE_CHARS = 16 * 1024  # one line's text; longer ones are cut, ending with TRUNCATED
TRUNCATED = "…"
LOG_TAIL_MAX = 10_000
LOG_CONTAINERS = 1_000  # containers one request names (an app's replicas at most)
LOG_ENDED = 1_000  # containers whose end one batch tells
StreamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
LogLabel = Annotated[str, Field(min_length=1, max_length=300)]  # "web.2@node-b"


class LogContainer(Wire):
    name: Id  # the Docker container's name on that node
    slot: int | None = None
    label: LogLabel


class LogRequest(Wire):
    """Start relaying these containers' lines to the stream."""

    type: Literal["logs"] = "logs"
    stream: StreamId
    containers: list[LogContainer] = Field(min_length=1, max_length=LOG_CONTAINERS)
    tail: Annotated[int, Field(ge=0, le=LOG_TAIL_MAX)] = 100
    since: Time | None = None  # epoch seconds
    follow: bool = False
    timestamps: bool = False


class LogStop(Wire):
    """Stop following the stream now (its caller left)."""

    type: Literal["logs_stop"] = "logs_stop"
    stream: StreamId


# An agent's channel asks `Upgrade: CHANNEL_UPGRADE`; after the CP's 101 it carries one
# JSON object a line both ways: down, a ChannelFrame (or {"type": "keepalive"}); up,
# {"type": "batch", "stream": ..., **LogBatch}. Without it, the older chunked event stream.
CHANNEL_UPGRADE = "docklet-channel/1"
ChannelFrame = Annotated[LogRequest | LogStop, Field(discriminator="type")]
CHANNEL_FRAME: TypeAdapter[LogRequest | LogStop] = TypeAdapter(ChannelFrame)


class LogLine(Wire):
    label: LogLabel
    text: Annotated[str, Field(max_length=LOG_LINE_CHARS)]
    time: Time | None = None  # when Docker received it, epoch seconds

    @classmethod
    def cut(cls, label: str, text: str, time: float | None = None) -> LogLine:
        """The line, its text cut to LOG_LINE_CHARS (ending with TRUNCATED) when longer."""
        if len(text) > LOG_LINE_CHARS:
            text = text[: LOG_LINE_CHARS - len(TRUNCATED)] + TRUNCATED
        return cls(label=label, text=text, time=time)


class LogEnd(StrEnum):
    """Why a container's lines ended (a LogEnded's reason may also be Docker's own words)."""

    EXITED = "container exited"  # following, and the container stopped
    NOT_FOUND = "container not found"
    DONE = "end of logs"  # not following: every line asked for was sent
    TIME_LIMIT = "followed for the longest a stream lasts; run it again"


class LogEnded(Wire):
    label: LogLabel
    reason: Annotated[str, Field(max_length=1000)]  # a LogEnd, or what Docker said


class LogBatch(Wire):
    lines: list[LogLine] = Field(default_factory=list, max_length=LOG_BATCH_LINES)
    dropped: Count = 0  # lines the agent dropped since its last batch (its buffer was full)
    ended: list[LogEnded] = Field(default_factory=list, max_length=LOG_ENDED)
    error: Text | None = None  # the agent cannot serve the stream at all (e.g. at its cap)


class HeartbeatReply(Wire):
    tasks_waiting: bool = False
    # Log requests for a node with no channel open: the slow fallback.
    logs: list[LogRequest] = Field(default_factory=list, max_length=100)


M = TypeVar("M", bound=Wire)


def parse(model: type[M], data: Any) -> M:
    """The body as `model`, or a 400 naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid {model.__name__.lower()}: {problems(exc)}") from None


def problems(exc: ValidationError, limit: int = 5) -> str:
    """Each bad field and why, the first few of them."""
    items = exc.errors()
    text = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in items[:limit]
    )
    return text + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
