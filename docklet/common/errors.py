"""Every Docklet exception, in one place.

API errors carry the HTTP status and a stable code; the API's one error hook
turns them into the one JSON error body, and the CLI maps them to exit codes.
"""


class DockletError(Exception):
    """Base of every error Docklet raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(DockletError):
    """The request is malformed: bad JSON, a missing or mistyped field."""

    status = 400
    code = "bad_request"


class InvalidSpec(BadRequest):
    """An app spec does not validate."""

    code = "invalid_spec"


class Unauthorized(DockletError):
    """A call without valid credentials: an API, node or join token."""

    status = 401
    code = "unauthorized"


class Forbidden(DockletError):
    """A valid API token whose scope does not allow the call."""

    status = 403
    code = "forbidden"


class RateLimited(DockletError):
    """Too many failed credentials from one address; `retry_after` says when to try again."""

    status = 429
    code = "rate_limited"


class TooManyStreams(DockletError):
    """Every stream slot of the CP is taken; `retry_after` says when to try again."""

    status = 503
    code = "too_many_streams"


class NotFound(DockletError):
    """The app, node or task does not exist."""

    status = 404
    code = "not_found"


class NodeBusy(TooManyStreams):
    """A node already serves as many log streams as it may; `retry_after` says when to retry."""

    status = 429


class TooManyChannels(DockletError):
    """Every agent channel the CP holds is taken (--agent-channels)."""

    status = 503
    code = "too_many_channels"


class AppNotFound(NotFound):
    """The app a log request names does not exist."""

    code = "app_not_found"


class NoContainers(NotFound):
    """The app (or the slot, node or revision asked for) has no containers to show."""

    code = "no_containers"


class NodeOffline(DockletError):
    """Every node that holds the containers asked for is offline; the message says since when."""

    status = 503
    code = "node_offline"


class StreamClosed(DockletError):
    """The log stream an agent posts to is closed or unknown: it stops following."""

    status = 410
    code = "stream_closed"


class Conflict(DockletError):
    """The request clashes with current state: a duplicate name, a stale lease."""

    status = 409
    code = "conflict"


class StaleLease(Conflict):
    """A task report whose lease token is not the task's current lease."""

    code = "stale_lease"


class RepoError(DockletError):
    """The desired-state Git repository could not be read or written."""

    code = "repo_error"


class RefMoved(RepoError):
    """The branch moved while a commit was being made; retry on the new head."""

    status = 409
    code = "ref_moved"


class DockerUnavailable(DockletError):
    """The Docker engine did not answer."""

    status = 503
    code = "docker_unavailable"


class TaskFailed(DockletError):
    """Docker refused the task, or its spec cannot be made a container; the message says which."""


class CPUnreachable(DockletError):
    """The control plane did not answer at all."""

    status = 0
    code = "cp_unreachable"


class RequestTimeout(DockletError, TimeoutError):
    """The request did not arrive in time (--read-timeout): headers and body.

    A TimeoutError too, so code that reads a socket (Git's CGI feeder) sees what it is.
    """

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(BadRequest):
    """A write whose body is not JSON (a form or text a web page could send)."""

    status = 415
    code = "unsupported_media_type"


class TooLarge(BadRequest):
    """A request body over the size the API accepts."""

    status = 413
    code = "too_large"


class APIError(DockletError):
    """The control plane answered with an error; carries its status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
