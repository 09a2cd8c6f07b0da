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
    """Where the app's current revision is in being deployed."""

    STABLE = "stable"
    DEPLOYING = "deploying"
    FAILED = "failed"


class RevisionStatus(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"


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
