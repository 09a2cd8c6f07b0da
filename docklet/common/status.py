"""Statuses, defined once: every state string Docklet stores or shows."""

from enum import StrEnum


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    REMOVED = "removed"  # the spec file is gone; containers are being removed


class ActualState(StrEnum):
    """An app's state as observed from agents' reports."""

    RUNNING = "running"
    DEGRADED = "degraded"  # some replicas run, not all
    PENDING = "pending"  # nothing runs yet; tasks are queued or executing
    STOPPED = "stopped"
    FAILED = "failed"  # the last deploy failed and nothing runs
    REMOVING = "removing"
    UNKNOWN = "unknown"  # the nodes that hold it are not reporting


class AppStatus(StrEnum):
    """Where the app's revision is in being deployed."""

    STABLE = "stable"
    DEPLOYING = "deploying"  # a first revision, or a slot being healed
    ROLLING_UPDATE = "rolling_update"  # a rollout to a new revision is under way
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class RevisionStatus(StrEnum):
    PENDING = "pending"  # synced; not rolled out yet (or being rolled out)
    STABLE = "stable"  # rolled out and verified: what the app runs
    REPLACED = "replaced"  # was stable; a newer revision is stable now
    FAILED = "failed"  # its rollout failed (the reason is kept)
    SUPERSEDED = "superseded"  # a newer revision came before it was stable
    HELD = "held"  # the same container spec failed before: waits for `docklet rollout retry`


class RolloutStatus(StrEnum):
    PENDING = "pending"
    CANARY = "canary"  # the canary's task is placed; waiting for its container
    VERIFYING = "verifying"  # the canary runs; the health gate is watching it
    PROMOTING = "promoting"  # the other replicas, max_parallel at a time
    STABLE = "stable"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"  # the old revision could not be restored in time
    FAILED = "failed"  # failed with auto_revert off: left as it is
    SUPERSEDED = "superseded"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ROLLOUTS


TERMINAL_ROLLOUTS = frozenset(
    {
        RolloutStatus.STABLE,
        RolloutStatus.ROLLED_BACK,
        RolloutStatus.ROLLBACK_FAILED,
        RolloutStatus.FAILED,
        RolloutStatus.SUPERSEDED,
    }
)
LIVE_ROLLOUT_STATUSES = tuple(s.value for s in RolloutStatus if s not in TERMINAL_ROLLOUTS)


class TaskKind(StrEnum):
    DEPLOY = "deploy"
    STOP = "stop"
    REMOVE = "remove"


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"  # leased to an agent
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_open(self) -> bool:
        return self in (TaskStatus.PENDING, TaskStatus.RUNNING)

    @property
    def is_reportable(self) -> bool:
        """What an agent may report: still working, or finished either way."""
        return self in (TaskStatus.RUNNING, TaskStatus.DONE, TaskStatus.FAILED)


OPEN_TASK_STATUSES = tuple(s.value for s in TaskStatus if s.is_open)


class NodeStatus(StrEnum):
    ONLINE = "online"
    UNKNOWN = "unknown"
    OFFLINE = "offline"


class ContainerState(StrEnum):
    """Docker's own container states, as agents report them (plus `unknown`)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"
    UNKNOWN = "unknown"  # its node stopped reporting

    @classmethod
    def is_live(cls, state: str) -> bool:
        """A process exists that `stop` would end."""
        return state in (cls.RUNNING, cls.RESTARTING, cls.PAUSED)


class EventKind(StrEnum):
    """What the event log records; each is also a CP log line."""

    APP_CREATED = "app_created"
    APP_DESIRED = "app_desired"
    APP_REMOVED = "app_removed"
    APP_FORGOTTEN = "app_forgotten"
    APP_UNSCHEDULABLE = "app_unschedulable"
    REVISION_CREATED = "revision_created"
    SYNC_ERROR = "sync_error"
    SLOT_PLACED = "slot_placed"
    TASK_CREATED = "task_created"
    TASK_LEASED = "task_leased"
    TASK_DONE = "task_done"
    TASK_FAILED = "task_failed"
    TASK_REQUEUED = "task_requeued"
    NODE_REGISTERED = "node_registered"
    NODE_ONLINE = "node_online"
    NODE_UNKNOWN = "node_unknown"
    NODE_OFFLINE = "node_offline"
    CONTROLLER_ERROR = "controller_error"
    ROLLOUT = "rollout"  # every transition of a rollout
    TOKEN = "token"  # an API token created or revoked, a bootstrap window used
    SECRET = "secret"  # a secret's value set (its version, never the value) or removed


class Access(StrEnum):
    """Who may call a route: each `api.Route` names one, and one check enforces it."""

    PUBLIC = "public"
    NODES_STATE = "nodes_state"  # public with --public-node-state (the default), else read
    JOIN = "join"  # registration: the join token, the node's own token, or the bootstrap window
    NODE = "node"  # the node's own token, for the node in the URL
    READ = "read"  # an API token of either scope
    ADMIN = "admin"  # an API token of scope admin


class TokenScope(StrEnum):
    READ = "read"
    ADMIN = "admin"
