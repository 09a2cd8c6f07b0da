"""The API's OpenAPI 3.1 document, made from the route table and the pydantic models.

Nothing here lists the routes: `document(routes)` walks `api.ROUTES` (method, path, access
level), so a route added there is in the document at once. What the table cannot say (a
request body's model, the answer's model, query parameters, a 201) is one entry per route
in `_DETAILS`, keyed by method and path, and built from the models the handlers parse with:
the agent protocol's (`wire.protocol`) and the app spec's (`AppSpec`). The error shape and
every status an operation can answer are documented from `common.errors`, so schemathesis
(tests/cp/test_schemathesis.py) can hold every answer to the document.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from docklet import API_VERSION, __version__
from docklet.common.status import Access, TokenScope
from docklet.cp.desired.spec import AppSpec
from docklet.wire.protocol import (
    LOG_TAIL_MAX,
    Heartbeat,
    LogBatch,
    Registration,
    RegistrationReply,
    TaskBatch,
    TaskReport,
)

OPENAPI_PATH = "/api/openapi.json"
_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"<(\w+)(?::(\w+))?>")  # Bottle's <name> and <name:filter>


class RouteLike(Protocol):
    """What the document needs of an `api.Route` (this module imports nothing of api)."""

    method: str
    path: str
    access: Access


# -- the bodies the table's handlers read that no other model describes -------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Rollback(_Body):
    """Which revision to commit back; the one before the current when absent."""

    to: Annotated[str, Field(pattern=r"^v?[0-9]{1,9}$", examples=["v2"])] | None = None


class Login(_Body):
    """The bootstrap login: the admin token's name."""

    name: Annotated[str, Field(max_length=64)] = "admin"


class NewToken(_Body):
    name: Annotated[str, Field(max_length=64)]
    scope: TokenScope = TokenScope.READ


class JoinTokenRequest(_Body):
    rotate: bool = False


class PlanRequest(_Body):
    """Spec files to plan (POST /api/plan): what would change if they were committed."""

    files: dict[Annotated[str, Field(pattern=r"^apps/[^/]+$")], str | None] = Field(
        description="Spec files by path (apps/NAME.yaml): their text, or null for a file the"
        " client could not send (it counts as invalid)."
    )
    complete: bool = Field(
        False, description="The files are the whole of apps/: an app not among them is removed."
    )


class SecretValue(_Body):
    """A secret's new value (PUT /api/secrets/{name}); it is never sent back."""

    value: Annotated[str, Field(max_length=64 * 1024)]


class ApplyRequest(_Body):
    """One spec file to commit (POST /api/apply), through the same checks as a plan."""

    file: Annotated[str, Field(pattern=r"^apps/[^/]+$", examples=["apps/web.yaml"])]
    text: str


class ApiError(BaseModel):
    """Every error the API answers, whatever raised it."""

    code: str = Field(examples=["not_found"])
    message: str
    status: int = Field(ge=100, le=599)


class ErrorBody(BaseModel):
    error: ApiError


class Detail(NamedTuple):
    """What the route table does not say about one route."""

    summary: str
    body: type[BaseModel] | str | None = None  # a model, or a components name
    answer: type[BaseModel] | str | None = None  # "object", "array", "text": no model says
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()  # name, schema, description
    status: int = 200
    media: tuple[str, ...] = ("application/json",)  # what the success answer may be sent as
    errors: tuple[
        int, ...
    ] = ()  # statuses this route answers beyond its kind's (`_error_statuses`)


_FLAG = {"type": "string", "enum": ["", "0", "1", "true", "false", "yes", "no"]}
_DETAILS: dict[tuple[str, str], Detail] = {
    ("GET", "/api/health"): Detail("The control plane can read its database.", answer="object"),
    ("GET", "/api/version"): Detail("Version, API level and cluster id.", answer="object"),
    ("GET", "/api/state/nodes"): Detail("Every node and its status.", answer="array"),
    ("GET", "/api/state/apps"): Detail(
        "Every app's view.",
        answer="array",
        query=(("brief", _FLAG, "Leave out each app's containers."),),
    ),
    ("GET", "/api/state/sync"): Detail("The repository's head and what synced.", answer="object"),
    ("GET", "/api/events"): Detail(
        "Recent events, newest first; with `since`, the ones after it, oldest first; with"
        " `Accept: text/event-stream`, a stream of them (SSE, resumable with Last-Event-ID).",
        answer="array",
        query=(
            ("app", {"type": "string", "maxLength": 253}, "Only this app's events."),
            ("limit", {"type": "number", "minimum": 1, "maximum": 1000}, "At most this many."),
            ("since", {"type": "string", "maxLength": 64}, "An event id, or a duration back."),
        ),
        media=("application/json", "text/event-stream"),
    ),
    ("GET", "/metrics"): Detail(
        "Prometheus metrics (public with --metrics-public).",
        answer="text",
        media=("text/plain", "application/openmetrics-text"),
    ),
    ("POST", "/api/apps"): Detail("Create an app (a commit).", "AppCreate", "object", status=201),
    ("GET", "/api/apps/<name>"): Detail("One app's view and its recent events.", answer="object"),
    ("POST", "/api/apps/<name>/update"): Detail("Change fields of an app's spec.", "AppUpdate"),
    ("POST", "/api/apps/<name>/stop"): Detail("Set the app's state to stopped.", answer="object"),
    ("POST", "/api/apps/<name>/start"): Detail("Set the app's state to running.", answer="object"),
    ("DELETE", "/api/apps/<name>"): Detail("Remove the app's file (a commit).", answer="object"),
    ("GET", "/api/apps/<name>/revisions"): Detail("The app's revisions.", answer="array"),
    ("POST", "/api/apps/<name>/rollback"): Detail("Commit an older revision back.", Rollback),
    ("POST", "/api/apps/<name>/rollouts/retry"): Detail("Retry a failed rollout.", answer="object"),
    ("GET", "/api/apps/<name>/rollouts"): Detail("The app's rollouts.", answer="array"),
    ("GET", "/api/apps/<name>/rollouts/<rollout_id:int>"): Detail("One rollout.", answer="object"),
    ("GET", "/api/apps/<name>/logs"): Detail(
        "The app's containers' lines, relayed from their agents, as Server-Sent Events: `data`"
        " a line (label, slot, node, text, time), `event: notice` a drop or a node's news,"
        " `event: end` the end. 404 app_not_found or no_containers, 503 node_offline or"
        " too_many_streams (the CP's --log-streams), 429 too_many_streams (the node's).",
        answer="text",
        query=(
            ("follow", _FLAG, "Keep following new lines."),
            ("tail", {"type": "integer", "minimum": 0, "maximum": LOG_TAIL_MAX}, "Last lines."),
            ("since", {"type": "string", "maxLength": 64}, "Only lines this long back (10m)."),
            ("slot", {"type": "integer", "minimum": 0}, "Only this slot's container."),
            ("node", {"type": "string", "maxLength": 64}, "Only this node's containers."),
            ("revision", {"type": "string", "pattern": "^v?[0-9]{1,9}$"}, "A kept revision's."),
            ("timestamps", _FLAG, "Ask Docker for each line's time."),
        ),
        media=("text/event-stream",),
    ),
    ("GET", "/api/agents/<node_id>/channel"): Detail(
        "The agent's channel. Asked with `Connection: Upgrade` and `Upgrade:"
        " docklet-channel/1`: 101 Switching Protocols, then one JSON object a line both ways"
        " (log requests and keepalives down, the agent's log batches up). Without: a"
        " text/event-stream answer that stays open (log requests as `data` frames). A new"
        " one replaces the node's older one. 503 too_many_channels past --agent-channels.",
        answer="text",
        media=("text/event-stream",),
    ),
    ("POST", "/api/agents/<node_id>/logs/<stream>"): Detail(
        "A batch of a log stream's lines from the node; 410 stream_closed once its caller left.",
        LogBatch,
        "object",
        errors=(410,),
    ),
    ("POST", "/api/agents/register"): Detail("An agent joins.", Registration, RegistrationReply),
    ("POST", "/api/agents/<node_id>/heartbeat"): Detail("A node's heartbeat.", Heartbeat, "object"),
    ("GET", "/api/agents/<node_id>/tasks"): Detail(
        "Lease the node's waiting tasks, long-polling.",
        answer=TaskBatch,
        query=(
            ("wait", {"type": "number", "minimum": 0}, "Seconds to wait for a task."),
            ("max", {"type": "number", "minimum": 1, "maximum": 100}, "At most this many."),
        ),
    ),
    ("POST", "/api/agents/<node_id>/tasks/<task_id:int>"): Detail(
        "Report a task's progress.", TaskReport, "object"
    ),
    ("POST", "/api/auth/bootstrap"): Detail("Claim a new cluster's admin token.", Login, "object"),
    ("GET", "/api/auth/whoami"): Detail("The calling token's name and scope.", answer="object"),
    ("GET", "/api/tokens"): Detail("Every API token (never a secret).", answer="array"),
    ("POST", "/api/tokens"): Detail("Create an API token.", NewToken, "object", status=201),
    ("DELETE", "/api/tokens/<name>"): Detail(
        "Revoke an API token.",
        answer="object",
        query=(("force", _FLAG, "Revoke even the last admin token."),),
    ),
    ("POST", "/api/nodes/join-token"): Detail("Show or rotate the join token.", JoinTokenRequest),
    ("PUT", "/api/secrets/<secret>"): Detail(
        "Set a secret's value: its next version; the apps that use it roll it out.",
        SecretValue,
        "object",
    ),
    ("GET", "/api/secrets"): Detail(
        "Every secret: versions, times, the apps that use it (never a value).", answer="array"
    ),
    ("DELETE", "/api/secrets/<secret>"): Detail(
        "Remove a secret (409 while an app uses it).", answer="object"
    ),
    ("POST", "/api/plan"): Detail(
        "What spec files would change (validation with file:line, per app the fields, the"
        " revision, rollout or direct, nodes and slots); nothing is written.",
        PlanRequest,
        "object",
    ),
    ("POST", "/api/apply"): Detail(
        "Commit one spec file, if it validates (a commit).", ApplyRequest, "object"
    ),
    ("POST", "/api/hooks/git"): Detail(
        "A Git host's push webhook (upstream mode, --git-url): signed (X-Hub-Signature-256,"
        " X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token), answered at once; the"
        " fetch follows. 401 unsigned, 403 signed wrongly or webhooks off, 404 without"
        " --git-url.",
        "object",
        "object",
        status=202,
    ),
    ("GET", OPENAPI_PATH): Detail("This document.", answer="object"),
}

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.PUBLIC: [],
    # Public unless docklet-cp runs with --no-public-node-state: no credential, or a token.
    Access.NODES_STATE: [{}, {"bearer": []}],
    Access.READ: [{"bearer": []}],
    Access.ADMIN: [{"bearer": []}],
    Access.NODE: [{"bearer": []}],
    # The join token; or the node's own token, re-registering; or, on a fresh cluster, nothing.
    Access.JOIN: [{"joinToken": []}, {"bearer": []}, {}],
}
_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (dku_…, scope read or admin) or, on /api/agents/, the"
        " node's own token. `x-docklet-access` on each operation says which.",
    },
    "joinToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Docklet-Join-Token",
        "description": "The cluster's join token (`docklet nodes join-token`).",
    },
    "gitBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Git over HTTP at /git/ (not in these paths): any user name, an API"
        " token as the password; a read token may fetch, an admin token may push.",
    },
}


def document(routes: Iterable[RouteLike]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, with every schema it refers to."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        detail = _DETAILS.get((route.method, route.path), Detail(route.path))
        operation = _operation(route, detail, route.access)
        paths.setdefault(_PARAM.sub(r"{\1}", route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Docklet control plane API",
            "version": __version__,
            "description": f"API level {API_VERSION}. Every error answers"
            ' {"error": {"code", "message", "status"}}. Generated from the route table.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": error_responses(),
            "securitySchemes": _SCHEMES,
        },
    }


def _operation(route: RouteLike, detail: Detail, access: Access) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": detail.summary,
        "operationId": _operation_id(route),
        "x-docklet-access": route.access.value,
        "security": _SECURITY[access],
        "parameters": _parameters(route.path, detail),
        "responses": _responses(route, detail, access),
    }
    if detail.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _ref(detail.body)}},
        }
    elif route.method in _WRITES and route.method != "DELETE":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
        }
    return operation


def _operation_id(route: RouteLike) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"\1", route.path)).strip("_")
    return f"{route.method.lower()}_{words}"


def _parameters(path: str, detail: Detail) -> list[dict[str, Any]]:
    found = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer"} if kind == "int" else {"type": "string", "minLength": 1},
        }
        for name, kind in _PARAM.findall(path)
    ]
    found += [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        for name, schema, text in detail.query
    ]
    return found


def _responses(route: RouteLike, detail: Detail, access: Access) -> dict[str, Any]:
    """The success answer, and every error status this kind of route can answer."""
    schema = _ref(detail.answer)
    ok = {"description": "OK", "content": {media: {"schema": schema} for media in detail.media}}
    answers: dict[str, Any] = {str(detail.status): ok}
    for status in sorted(_error_statuses(route, access) | set(detail.errors)):
        answers[str(status)] = {"$ref": f"#/components/responses/{status}"}
    return answers


def _error_statuses(route: RouteLike, access: Access) -> set[int]:
    # Any request: a header that is not ASCII or a bad query; too slow; the CP overloaded.
    statuses = {400, 408, 503}
    if access != Access.PUBLIC:
        statuses |= {401, 403, 429}  # no, the wrong, or a guessing credential
    if "<" in route.path:
        statuses.add(404)
    if route.method in _WRITES:
        statuses |= {403, 404, 409, 413, 415}  # a browser's write; a conflict; the body
    if route.path == "/api/hooks/git":
        statuses.add(401)  # public, but signed: an unsigned webhook is refused
    return statuses


def _ref(what: type[BaseModel] | str | None) -> dict[str, Any]:
    if what == "text":
        return {"type": "string"}
    if what is None or what == "object":
        return {"type": "object"}
    if what == "array":
        return {"type": "array", "items": {"type": "object"}}
    name = what if isinstance(what, str) else what.__name__
    return {"$ref": _REF.format(model=name)}


def _schemas() -> dict[str, Any]:
    """Every model's JSON Schema (2020-12, as OpenAPI 3.1 takes it), and the app spec's forms."""
    models = {d.body for d in _DETAILS.values()} | {d.answer for d in _DETAILS.values()}
    models = {m for m in models if isinstance(m, type)} | {AppSpec, ErrorBody}
    _, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=_REF
    )
    schemas: dict[str, Any] = top["$defs"]
    create = copy.deepcopy(schemas["AppSpec"])
    create["required"] = ["image"]  # the name defaults to the image's
    create["description"] = "An app spec; `name` defaults to the image's name."
    update = copy.deepcopy(schemas["AppSpec"])
    update.pop("required", None)
    update["description"] = "The app spec's fields to change; `name` must stay the same."
    schemas["AppCreate"], schemas["AppUpdate"] = create, update
    return schemas


def error_responses() -> dict[str, Any]:
    """One reusable response per error status, each in the one error shape."""
    return {
        str(status): {
            "description": text,
            "content": {"application/json": {"schema": _ref("ErrorBody")}},
        }
        for status, text in _ERROR_TEXT.items()
    }


_ERROR_TEXT = {
    400: "Bad request: a field, parameter or header is wrong (code bad_request, invalid_spec).",
    401: "No credential, or a wrong one (unauthorized).",
    403: "The credential may not do this, or a browser sent a write (forbidden).",
    404: "No such app, rollout, token or endpoint (not_found).",
    408: "The request did not arrive in time (request_timeout).",
    409: "A conflict: the app exists, the repository moved, a stale lease (conflict, …).",
    410: "The log stream is closed: its caller left (stream_closed); stop following it.",
    413: "The body is over the limit (too_large).",
    415: "A write's body must be application/json (unsupported_media_type).",
    429: "Too many failed credentials from this address (rate_limited); see Retry-After.",
    503: "Overloaded or Docker unavailable; retry after Retry-After (overloaded, …).",
}


@functools.lru_cache(maxsize=4)
def document_text(routes: tuple[RouteLike, ...]) -> str:
    """The document as the API serves it: made once per route table, not on every request."""
    return json.dumps(document(routes), allow_nan=False)
