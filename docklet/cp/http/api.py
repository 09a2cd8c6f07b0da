"""The REST API (Bottle): state queries, imperative app commands, agent endpoints.

Handlers are plain functions of the `ControlPlane` and the URL's parts; they
parse the request, call the service of their resource (`cp.apps`, `cp.views`,
`cp.agents`, `cp.tokens`) and shape the answer. `ROUTES` is the one table the
app is built from, with the access level of every route (and that the
error-shape contract test walks). Every error, whatever raised it, leaves as
one JSON shape: `{"error": {"code": "...", "message": "...", "status": 404}}`.

No write is reachable by a browser's simple request (`browser_guard`), and a
bootstrap window is claimed only under one of the CP's own names (`_foreign_host`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from bottle import Bottle, HTTPError, HTTPResponse, request, response

from docklet import API_VERSION, __version__
from docklet.common import defaults, logs
from docklet.common.errors import (
    BadRequest,
    DockletError,
    Forbidden,
    InvalidSpec,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from docklet.common.status import Access, TokenScope
from docklet.common.units import parse_duration
from docklet.cp.desired import spec, webhook
from docklet.cp.desired.spec import SpecState
from docklet.cp.http import auth, openapi
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.logstreams import LogQuery
from docklet.cp.service.metrics import Measured
from docklet.cp.service.stream import Stream
from docklet.cp.service.tokens import Author, Caller
from docklet.cp.settings import CPConfig
from docklet.wire.protocol import (
    CHANNEL_UPGRADE,
    LOG_TAIL_MAX,
    MAX_CONTAINERS,
    NODE_NAME,
    Heartbeat,
    LogBatch,
    Registration,
    TaskReport,
    parse,
)

log = logging.getLogger(__name__)

_USER = re.compile(r"[\w.@+-]{1,64}", re.ASCII)  # matched whole: `$` lets "x\n" by
MAX_TASKS_PER_POLL = 100


# -- request and answer helpers ----------------------------------------------------


def _json(value: Any) -> str:
    response.content_type = "application/json"
    return json.dumps(value, allow_nan=False)


def _error_body(status: int, code: str, message: str) -> str:
    response.status = status
    return _json({"error": {"code": code, "message": message, "status": status}})


def json_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: DockletErrors become their status; anything else a logged 500."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except DockletError as exc:
            if "retry_after" in exc.details:
                response.set_header("Retry-After", str(exc.details["retry_after"]))
            return _error_body(exc.status, exc.code, exc.message)
        except HTTPResponse:
            raise
        except Exception:
            log.exception("%s %s: internal error", request.method, request.path)
            return _error_body(500, "internal", "internal error; the control plane log has details")

    return wrapper


# -- request ids ----------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-Id"
# Matched whole: no space, quote or newline can reach a log line through it.
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{defaults.REQUEST_ID_MAX}}}", re.ASCII)
# The URL parts a route names, as the log context field each fills.
_URL_FIELDS = {"name": "app", "node_id": "node", "task_id": "task", "rollout_id": "rollout"}
_URL_FIELD_MAX = 128  # a URL part is the caller's text: a log field keeps this much


def request_id() -> str:
    """This request's id: the caller's X-Request-Id when well-formed, else a new one."""
    known = request.environ.get("docklet.request_id")
    if known is None:
        given = request.environ.get("HTTP_X_REQUEST_ID", "")
        known = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.environ["docklet.request_id"] = known
    return str(known)


def request_context(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin, the outermost: the request's id is echoed on its answer, and every
    log line the request causes carries it, with the app, node, task or rollout its URL
    names. (Errors the router answers get the header in `http_error`.)"""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rid = request_id()
        response.set_header(REQUEST_ID_HEADER, rid)
        fields = {
            _URL_FIELDS[k]: v if isinstance(v, int) else str(v)[:_URL_FIELD_MAX]
            for k, v in kwargs.items()
            if k in _URL_FIELDS
        }
        with logs.context(request_id=rid, **fields):
            try:
                return callback(*args, **kwargs)
            except HTTPResponse as answer:  # Bottle answers with its headers, not `response`'s
                answer.set_header(REQUEST_ID_HEADER, rid)
                raise

    return wrapper


def body(cp: ControlPlane) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    limit = cp.config.max_body
    raw = request.body.read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(f"request body is over {limit} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
        # Lone surrogates ("\ud800") decode but can be stored or committed nowhere.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _not_a_number(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity, which no answer can carry
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def header(name: str) -> str:
    """A request header; one that is not ASCII is a 400, not a decoding crash."""
    try:
        value = request.get_header(name, "")
        value.encode("ascii")
    except UnicodeError:
        raise BadRequest(f"header {name} must be ASCII") from None
    return value


def _author() -> Author:
    """Who this call changes things as: the token the access check verified, and the
    X-Docklet-User its holder says they are (a claim, kept as the Git author's name)."""
    caller: Caller | None = request.environ.get("docklet.caller")
    user = header("X-Docklet-User")
    return Author(caller.name if caller else "", user if _USER.fullmatch(user) else "")


# -- what a browser may not do ----------------------------------------------------------

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BOOTSTRAP_PATH = "/api/auth/bootstrap"


def browser_guard(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: no write is reachable by a browser's simple request, or from another site.

    A page in an admin's browser may send a form or text/plain POST anywhere
    without asking first; a JSON one only to its own origin, since the API
    answers no CORS preflight. So a write with a body (and the bootstrap, even
    without one) must say JSON, and a browser's marks of another site
    (`Sec-Fetch-Site`, `Origin`) refuse it. The CLI and the agents send JSON and
    neither mark.
    """

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.method in WRITES:
            _refuse_browser_write()
        return callback(*args, **kwargs)

    return wrapper


def _refuse_browser_write() -> None:
    if request.path == webhook.PATH:
        return  # signed with a secret no web page knows; GitHub may send it form-encoded
    if request.path == BOOTSTRAP_PATH or request.content_length > 0 or header("Transfer-Encoding"):
        media = header("Content-Type").partition(";")[0].strip().lower()
        if media != "application/json":
            raise UnsupportedMediaType(
                f"a write's body must be JSON, sent as Content-Type: application/json (not"
                f" {media[:60] or 'none'}): the API takes no form or text body, which a web"
                " page could send"
            )
    site = header("Sec-Fetch-Site").lower()
    if site not in ("", "same-origin", "none"):
        raise Forbidden(
            f"refused: a browser sent this write from another site (Sec-Fetch-Site: {site[:30]});"
            " the API takes writes from the docklet CLI, agents and scripts"
        )
    origin = header("Origin")
    if origin and not _same_origin(origin, header("Host")):
        raise Forbidden(
            f"refused: Origin {origin[:100]} is not this control plane's own; the API takes"
            " writes from the docklet CLI, agents and scripts, not from web pages"
        )


def _same_origin(origin: str, host: str) -> bool:
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(host) and netloc == host.lower()


def _foreign_host(config: CPConfig) -> str:
    """Why this request may not claim a bootstrap window under its Host ("" if it may).

    A web page that has its own domain resolve to the CP (DNS rebinding) sends
    that domain as Host, and nothing else a request without a secret carries
    tells it from the CLI. An IP address cannot be rebound, so it passes, as do
    localhost, the listen address, this machine's name and --allowed-hosts.
    Writes with a token need none of this: a page knows no token.
    """
    host = header("Host")
    if not host:
        return ""  # HTTP/1.0 without one: no browser
    try:
        name = (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:
        name = ""
    if name and (name in _own_names(config) or _is_ip(name)):
        return ""
    return (
        f"Host {host[:100]!r} is not a name of this control plane: claim a bootstrap window"
        " through its IP address or localhost, or start docklet-cp with --allowed-hosts"
        f" {name or 'NAME'} (DOCKLET_ALLOWED_HOSTS); a web page cannot claim the cluster"
        " under a name it controls"
    )


def _own_names(config: CPConfig) -> set[str]:
    extra = config.allowed_hosts  # other names the operator reaches this CP by
    names = {"localhost", config.host.lower(), socket.gethostname().lower()}
    return names | {n.strip().lower().rstrip(".") for n in extra.split(",") if n.strip()}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _number_param(name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequest(f"query parameter {name!r} must be a number, not {raw!r}")
    return min(max(value, low), high)


def _flag_param(name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"query parameter {name!r} must be true or false, not {raw!r}")


def _agent(cp: ControlPlane, node_id: str) -> str:
    """The caller's node token, checked against the node it speaks for."""
    authorization = header("Authorization")
    token = authorization[7:] if authorization.startswith("Bearer ") else ""
    cp.agents.authenticate(node_id, token)
    return token


# -- handlers -------------------------------------------------------------------------


def health(cp: ControlPlane) -> str:
    cp.views.healthy()
    return _json({"status": "ok"})


def version(cp: ControlPlane) -> str:
    return _json(
        {
            "version": __version__,
            "api": API_VERSION,
            "cluster_id": cp.cluster_id,
            "bootstrap": cp.tokens.windows(),
            "metrics": cp.views.metrics(),
        }
    )


def state_nodes(cp: ControlPlane) -> str:
    return _json(cp.views.nodes())


def state_apps(cp: ControlPlane) -> str:
    return _json(cp.views.apps(brief=_flag_param("brief")))


def state_sync(cp: ControlPlane) -> str:
    return _json(cp.views.sync_state())


MAX_APP_PARAM = 253  # longer than any app name: an `app=` beyond it is refused, not looked up


def list_events(cp: ControlPlane) -> Any:
    """The event log: the newest `limit`; with `since` (an event id or a duration back) the
    ones after it, oldest first; with `Accept: text/event-stream` a stream of them (SSE,
    resumable with Last-Event-ID). One path for both: the list's callers are unchanged, an
    EventSource sends that Accept by itself, and a client that does not ask never waits."""
    app = request.query.get("app") or None
    if app is not None and len(app) > MAX_APP_PARAM:
        raise BadRequest(f"query parameter 'app' is an app name, at most {MAX_APP_PARAM} long")
    since = request.query.get("since", "")
    if "text/event-stream" in header("Accept").lower():
        after = cp.streams.start_after(header("Last-Event-ID"), since)
        return _event_stream(cp.streams.open(app, after))
    limit = int(_number_param("limit", 50, 1, 1000))
    if since:
        return _json(cp.streams.page(app, cp.streams.start_after("", since), limit))
    return _json(cp.views.events(app, limit))


def _event_stream(stream: Stream) -> Stream:
    response.content_type = "text/event-stream; charset=utf-8"
    response.set_header("Cache-Control", "no-cache")
    response.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
    return stream


def create_app(cp: ControlPlane) -> str:
    data = body(cp)
    if not isinstance(data.get("image"), str) or not data["image"].strip():
        raise InvalidSpec('\'image\' is required, e.g. {"image": "nginx:1.25"}')
    data["image"] = spec.with_default_tag(data["image"].strip())
    data.setdefault("name", spec.default_name(data["image"]))
    cp.secrets.check_refs(data)  # a secret it names must exist before it is committed
    view = cp.apps.create(data, _author())
    response.status = 201
    return _json(view)


def get_app(cp: ControlPlane, name: str) -> str:
    view = cp.views.app(name)
    view["events"] = cp.views.events(name, 20)
    return _json(view)


def update_app(cp: ControlPlane, name: str) -> str:
    fields = body(cp)
    cp.secrets.check_refs(fields)
    return _json(cp.apps.update(name, fields, _author()))


def stop_app(cp: ControlPlane, name: str) -> str:
    return _json(cp.apps.set_state(name, SpecState.STOPPED, _author()))


def start_app(cp: ControlPlane, name: str) -> str:
    return _json(cp.apps.set_state(name, SpecState.RUNNING, _author()))


def delete_app(cp: ControlPlane, name: str) -> str:
    return _json(cp.apps.remove(name, _author()))


def revisions(cp: ControlPlane, name: str) -> str:
    return _json(cp.views.revisions(name))


def rollback(cp: ControlPlane, name: str) -> str:
    data = body(cp)
    to = data.get("to")
    if to is not None and (not isinstance(to, str) or not re.fullmatch(r"v?[0-9]{1,9}", to)):
        raise BadRequest("'to' is a revision such as \"v2\" (docklet history lists them)")
    return _json(cp.apps.rollback(name, int(to.lstrip("v")) if to else None, _author()))


def retry_rollout(cp: ControlPlane, name: str) -> str:
    return _json(cp.apps.retry(name, _author()))


def list_rollouts(cp: ControlPlane, name: str) -> str:
    return _json(cp.views.rollouts(name))


def get_rollout(cp: ControlPlane, name: str, rollout_id: int) -> str:
    return _json(cp.views.rollout(name, rollout_id))


def plan_changes(cp: ControlPlane) -> str:
    """What spec files would change, decided as a pass would, applied nowhere (read access)."""
    data = body(cp)
    complete = data.get("complete", False)
    if not isinstance(complete, bool):
        raise BadRequest("'complete' is true (the files are the whole of apps/) or false")
    return _json(cp.planning.plan(data.get("files"), complete))


def apply_file(cp: ControlPlane) -> str:
    """Commit one spec file, through the checks a plan makes (docklet apply -f FILE)."""
    data = body(cp)
    return _json(cp.planning.apply(data.get("file"), data.get("text"), _author()))


def git_webhook(cp: ControlPlane) -> str:
    """A Git host's push webhook (upstream mode): verified by its signature, answered 202
    at once; the fetch happens on the upstream watcher's thread (desired/webhook.py)."""
    raw = request.body.read(webhook.MAX_BODY + 1)
    headers = {name: header(name) for name in webhook.HEADERS}
    address = request.environ.get("REMOTE_ADDR") or "unknown"
    try:
        answer = webhook.receive(cp.upstream, headers, raw, address)
    except (Unauthorized, Forbidden) as exc:  # a wrong signature counts as a guessed secret
        auth.failed(cp, address, guessed=isinstance(exc, Forbidden))
        raise
    response.status = 202
    return _json(answer)


# -- secrets ---------------------------------------------------------------------------


def set_secret(cp: ControlPlane, secret: str) -> str:
    """A new version of a secret (body {"value": "..."}); never echoed back."""
    return _json(cp.secrets.set(secret, body(cp).get("value"), str(_author())))


def list_secrets(cp: ControlPlane) -> str:
    return _json(cp.secrets.listing())


def remove_secret(cp: ControlPlane, secret: str) -> str:
    return _json(cp.secrets.remove(secret, str(_author())))


def openapi_document(cp: ControlPlane) -> str:
    """The OpenAPI 3.1 document of this table (docklet/cp/http/openapi.py makes it)."""
    response.content_type = "application/json"
    return openapi.document_text(ROUTES)


def metrics(cp: ControlPlane) -> str:
    """Prometheus' exposition of this CP's registry (docklet/cp/service/metrics.py)."""
    text, content_type = cp.metrics.exposition(header("Accept"))
    response.content_type = content_type
    return text.decode()


def register(cp: ControlPlane) -> str:
    reg = parse(Registration, body(cp))
    node_token = auth.bearer(header("Authorization"))
    answer = cp.agents.register(
        reg,
        node_token=node_token,
        join_token=header(JOIN_HEADER),
        window_refused=_foreign_host(cp.config),
    )
    return _json(answer)


# -- credentials ----------------------------------------------------------------------

JOIN_HEADER = "X-Docklet-Join-Token"


def bootstrap_login(cp: ControlPlane) -> str:
    name = body(cp).get("name") or "admin"
    refused = _foreign_host(cp.config)
    if refused:
        raise Forbidden(refused)
    by = f"{_author()} from {request.remote_addr or 'unknown'}"
    secret = cp.tokens.bootstrap_admin(str(name), by)
    return _json({"name": name, "scope": TokenScope.ADMIN, "token": secret})


def whoami(cp: ControlPlane) -> str:
    caller: Caller = request.environ["docklet.caller"]
    return _json({"name": caller.name, "scope": caller.scope})


def list_tokens(cp: ControlPlane) -> str:
    return _json(cp.tokens.listing())


def create_token(cp: ControlPlane) -> str:
    data = body(cp)
    scope = data.get("scope", TokenScope.READ)
    if scope not in tuple(TokenScope):
        raise BadRequest("'scope' is read or admin")
    secret = cp.tokens.create(data.get("name"), TokenScope(scope), str(_author()))
    response.status = 201
    return _json({"name": data["name"], "scope": scope, "token": secret})


def revoke_token(cp: ControlPlane, name: str) -> str:
    cp.tokens.revoke(name, str(_author()), force=_flag_param("force"))
    return _json({"name": name, "revoked": True})


def join_token(cp: ControlPlane) -> str:
    rotate = body(cp).get("rotate") is True
    secret = cp.tokens.join_token(rotate=rotate, by=str(_author()))
    return _json({"token": secret, "rotated": rotate})


def heartbeat(cp: ControlPlane, node_id: str) -> str:
    _agent(cp, node_id)
    data = body(cp)
    listed = data.get("containers") if isinstance(data, dict) else None
    if isinstance(listed, list) and len(listed) > MAX_CONTAINERS:
        raise TooLarge(
            f"a heartbeat lists at most {MAX_CONTAINERS} containers; this one lists"
            f" {len(listed)}: that many on one Docker engine is beyond what Docklet manages"
        )
    waiting = cp.agents.heartbeat(node_id, parse(Heartbeat, data))
    answer: dict[str, Any] = {"status": "ok", "tasks_waiting": waiting}
    held = cp.channels.held(node_id)  # log requests for a node with no channel open
    if held:
        answer["logs"] = held
    return _json(answer)


def agent_tasks(cp: ControlPlane, node_id: str) -> str:
    token = _agent(cp, node_id)
    wait = _number_param("wait", 0, 0, cp.config.long_poll_max)
    limit = int(_number_param("max", 10, 1, MAX_TASKS_PER_POLL))
    return _json(cp.agents.poll_tasks(node_id, token, wait, limit))


def agent_report(cp: ControlPlane, node_id: str, task_id: int) -> str:
    _agent(cp, node_id)
    return _json(cp.agents.report(node_id, task_id, parse(TaskReport, body(cp))))


# -- the log relay (docs/architecture.md "The log relay") -------------------------------


def app_logs(cp: ControlPlane, name: str) -> Any:
    """The app's containers' lines, relayed from their agents, as Server-Sent Events."""
    query = LogQuery(
        tail=_int_param("tail", 100, 0, LOG_TAIL_MAX),
        since=_since_param(),
        follow=_flag_param("follow"),
        timestamps=_flag_param("timestamps"),
        slot=_int_param("slot", None, 0, 1_000_000),
        node=_node_param(),
        revision=_revision_param(),
    )
    gone = request.environ.get("docklet.gone", bool)  # the server's: whether the caller hung up
    return _event_stream(cp.logstreams.open(name, query, gone))


def _int_param(name: str, default: int | None, low: int, high: int) -> Any:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) < 10 and low <= int(raw) <= high):
        raise BadRequest(
            f"query parameter {name!r} is a whole number {low}..{high}, not {raw[:20]!r}"
        )
    return int(raw)


def _since_param() -> float | None:
    raw = request.query.get("since", "")
    if raw == "":
        return None
    try:
        back = parse_duration(raw)
    except ValueError:
        raise BadRequest(
            "query parameter 'since' is a duration back from now (e.g. 10m, 1h30m), not"
            f" {raw[:40]!r}"
        ) from None
    return time.time() - back


def _node_param() -> str | None:
    raw = request.query.get("node", "")
    if raw == "":
        return None
    if not re.fullmatch(NODE_NAME.strip("^$"), raw):
        raise BadRequest(
            f"query parameter 'node' is a node's name (docklet nodes), not {raw[:70]!r}"
        )
    return raw


def _revision_param() -> int | None:
    raw = request.query.get("revision", "")
    if raw == "":
        return None
    if not re.fullmatch(r"v?[0-9]{1,9}", raw, re.ASCII):
        raise BadRequest(
            "query parameter 'revision' is a revision such as v3 (docklet history), not"
            f" {raw[:20]!r}"
        )
    return int(raw.lstrip("v"))


def agent_channel(cp: ControlPlane, node_id: str) -> Any:
    """The agent's channel: a text/event-stream answer whose socket the server hands to
    `cp.channels` after its first frame, so it holds no thread while it stays open."""
    _agent(cp, node_id)
    cp.channels.admit(node_id)
    cp.liveness.heard(node_id)
    upgrade = request.environ.get("docklet.upgrade")  # None outside the real server
    if upgrade is not None and _asks_upgrade():
        # 101: from here on the socket carries JSON lines both ways (the agent's log
        # batches come up it), held by cp.channels' thread from the moment it is written.
        response.status = 101
        response.set_header("Connection", "Upgrade")
        response.set_header("Upgrade", CHANNEL_UPGRADE)
        upgrade(lambda sock, pending: cp.channels.adopt(node_id, sock, True, pending))
        return b""
    detach = request.environ.get("docklet.detach")  # None outside the real server: ends at once
    response.content_type = "text/event-stream; charset=utf-8"
    response.set_header("Cache-Control", "no-cache")
    return _channel(cp, node_id, detach)


def _asks_upgrade() -> bool:
    """Whether the agent asks for the upgraded channel (an older agent does not)."""
    if request.environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return False
    tokens = {t.strip().lower() for t in request.get_header("Connection", "").split(",")}
    return "upgrade" in tokens and request.get_header("Upgrade", "").strip() == CHANNEL_UPGRADE


def _channel(cp: ControlPlane, node_id: str, detach: Callable[[], Any] | None) -> Iterator[bytes]:
    yield b": channel open\n\n"
    sock = detach() if detach is not None else None  # its first frame is written
    if sock is not None:  # the answer goes on from the channels' thread
        cp.channels.adopt(node_id, sock)


def agent_logs(cp: ControlPlane, node_id: str, stream: str) -> str:
    _agent(cp, node_id)
    cp.liveness.heard(node_id)
    return _json(cp.logstreams.post(node_id, stream, parse(LogBatch, body(cp))))


class Route(NamedTuple):
    method: str
    path: str
    handler: Callable[..., str]
    access: Access  # who may call it; `guarded` enforces it


ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/health", health, Access.PUBLIC),
    Route("GET", "/api/version", version, Access.PUBLIC),
    Route("GET", "/api/state/nodes", state_nodes, Access.NODES_STATE),
    Route("GET", "/api/state/apps", state_apps, Access.READ),
    Route("GET", "/api/state/sync", state_sync, Access.READ),
    Route("GET", "/api/events", list_events, Access.READ),
    Route("POST", "/api/apps", create_app, Access.ADMIN),
    Route("GET", "/api/apps/<name>", get_app, Access.READ),
    Route("POST", "/api/apps/<name>/update", update_app, Access.ADMIN),
    Route("POST", "/api/apps/<name>/stop", stop_app, Access.ADMIN),
    Route("POST", "/api/apps/<name>/start", start_app, Access.ADMIN),
    Route("DELETE", "/api/apps/<name>", delete_app, Access.ADMIN),
    Route("GET", "/api/apps/<name>/revisions", revisions, Access.READ),
    Route("POST", "/api/apps/<name>/rollback", rollback, Access.ADMIN),
    Route("POST", "/api/apps/<name>/rollouts/retry", retry_rollout, Access.ADMIN),
    Route("GET", "/api/apps/<name>/rollouts", list_rollouts, Access.READ),
    Route("GET", "/api/apps/<name>/rollouts/<rollout_id:int>", get_rollout, Access.READ),
    Route("POST", "/api/plan", plan_changes, Access.READ),  # changes nothing
    Route("POST", "/api/apply", apply_file, Access.ADMIN),
    Route("POST", webhook.PATH, git_webhook, Access.PUBLIC),  # signed by the Git host
    Route("PUT", "/api/secrets/<secret>", set_secret, Access.ADMIN),
    Route("GET", "/api/secrets", list_secrets, Access.READ),
    Route("DELETE", "/api/secrets/<secret>", remove_secret, Access.ADMIN),
    Route("GET", "/api/apps/<name>/logs", app_logs, Access.READ),
    Route("POST", "/api/agents/register", register, Access.JOIN),
    Route("POST", "/api/agents/<node_id>/heartbeat", heartbeat, Access.NODE),
    Route("GET", "/api/agents/<node_id>/tasks", agent_tasks, Access.NODE),
    Route("POST", "/api/agents/<node_id>/tasks/<task_id:int>", agent_report, Access.NODE),
    Route("GET", "/api/agents/<node_id>/channel", agent_channel, Access.NODE),
    Route("POST", "/api/agents/<node_id>/logs/<stream>", agent_logs, Access.NODE),
    Route("POST", "/api/auth/bootstrap", bootstrap_login, Access.PUBLIC),
    Route("GET", "/api/auth/whoami", whoami, Access.READ),
    Route("GET", "/api/tokens", list_tokens, Access.ADMIN),
    Route("POST", "/api/tokens", create_token, Access.ADMIN),
    Route("DELETE", "/api/tokens/<name>", revoke_token, Access.ADMIN),
    Route("POST", "/api/nodes/join-token", join_token, Access.ADMIN),
    Route("GET", "/metrics", metrics, Access.READ),  # public with --metrics-public
    Route("GET", openapi.OPENAPI_PATH, openapi_document, Access.PUBLIC),
)


def guarded(cp: ControlPlane, route: Route) -> Callable[..., str]:
    """The route's handler behind the check its `access` names.

    Wrong credentials (never missing ones: those are no guess) count against
    the caller's address, and are logged without the credential itself; past
    the address's limit they get 429 (auth.failed). A credential that passes
    is served whatever its address's count.
    """
    handler = functools.partial(route.handler, cp)
    access = route.access
    if access == Access.NODES_STATE and cp.config.public_node_state:
        access = Access.PUBLIC
    if access == Access.NODES_STATE:
        access = Access.READ
    if route.handler is metrics and cp.config.metrics_public:
        access = Access.PUBLIC

    @functools.wraps(route.handler)
    def check(**kwargs: Any) -> str:
        if access == Access.PUBLIC:
            return handler(**kwargs)
        address = request.environ.get("REMOTE_ADDR") or "unknown"
        secret = auth.bearer(header("Authorization"))
        try:
            caller = auth.check(cp, access, secret, kwargs.get("node_id", ""))
            if caller is not None:
                request.environ["docklet.caller"] = caller
            elif access == Access.NODE:
                cp.liveness.spoke_from(address)  # a refusal to it may hide a heartbeat
            return handler(**kwargs)
        except Unauthorized as exc:
            auth.failed(cp, address, guessed=bool(secret) or access == Access.JOIN)
            log.warning(
                "auth: %s %s from %s refused: %s", request.method, request.path, address, exc
            )
            raise

    return check


def make_app(cp: ControlPlane) -> Measured:
    app = Bottle()
    app.install(request_context)  # outermost: a 500's log line carries the request id too
    app.install(json_errors)
    app.install(browser_guard)  # inside json_errors: its refusals leave in the JSON shape
    for route in ROUTES:
        app.route(route.path, route.method, guarded(cp, route))

    def http_error(err: HTTPError) -> str:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            err.status_code, "http_error"
        )
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(err.status_code, str(err.body))
        response.set_header(REQUEST_ID_HEADER, request_id())  # the router's answers too
        return _error_body(err.status_code, code, message)

    for status in (400, 401, 403, 404, 405, 413, 429, 500):
        app.error_handler[status] = http_error
    return cp.metrics.measured(app)
