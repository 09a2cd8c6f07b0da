"""The REST API (Bottle): state queries, imperative app commands, agent endpoints.

Every error, whatever raised it, leaves as one JSON shape:
`{"error": {"code": "...", "message": "...", "status": 404}}`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import yaml
from bottle import Bottle, HTTPError, HTTPResponse, request, response

from docklet import API_VERSION, __version__, defaults, nodes, spec, tasks
from docklet.controlplane import ControlPlane
from docklet.errors import BadRequest, Conflict, DockletError, InvalidSpec, NotFound, TooLarge
from docklet.gitrepo import Changes
from docklet.protocol import Registration, parse
from docklet.state import app_views, events_view, nodes_view, revisions_view

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
_USER = re.compile(r"^[\w.@+-]{1,64}$", re.ASCII)


def _remove(_spec: dict[str, Any]) -> None:
    """The edit that removes an app's file (recognised, so the file is never parsed)."""
    return None


def _json(value: Any) -> str:
    response.content_type = "application/json"
    return json.dumps(value)


def _error_body(status: int, code: str, message: str, **details: Any) -> str:
    response.status = status
    return _json({"error": {"code": code, "message": message, "status": status, **details}})


def json_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: DockletErrors become their status; anything else a logged 500."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except DockletError as exc:
            return _error_body(exc.status, exc.code, exc.message)
        except HTTPResponse:
            raise
        except Exception:
            log.exception("%s %s: internal error", request.method, request.path)
            return _error_body(500, "internal", "internal error; the control plane log has details")

    return wrapper


def body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = request.body.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise TooLarge(f"request body is over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constants)
        # Lone surrogates ("\ud800") decode but can be stored or committed nowhere.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def header(name: str) -> str:
    """A request header; one that is not ASCII is a 400, not a decoding crash."""
    try:
        value = request.get_header(name, "")
        value.encode("ascii")
    except UnicodeError:
        raise BadRequest(f"header {name} must be ASCII") from None
    return value


def _author() -> str:
    user = header("X-Docklet-User")
    return f"{user} <{user}>" if _USER.match(user) else "docklet-api <docklet@localhost>"


def _app_path(files: dict[str, bytes], name: str) -> str | None:
    for suffix in (".yaml", ".yml"):
        if f"{defaults.APPS_DIR}/{name}{suffix}" in files:
            return f"{defaults.APPS_DIR}/{name}{suffix}"
    return None


def _existing(files: dict[str, bytes], name: str) -> tuple[str, dict[str, Any]]:
    path = _app_path(files, name)
    if path is None:
        raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
    try:
        data = yaml.safe_load(files[path])
    except yaml.YAMLError:
        raise InvalidSpec(
            f"{path} is not valid YAML; fix it with a commit, or remove the app (docklet rm)"
        ) from None
    return path, data if isinstance(data, dict) else {}


def _dump(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def make_app(cp: ControlPlane) -> Bottle:
    app = Bottle()
    app.install(json_errors)

    def authenticated(node_id: str) -> str:
        auth = header("Authorization")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        nodes.authenticate(cp.store, node_id, token)
        return token

    def app_view(name: str) -> dict[str, Any]:
        views = app_views(cp.store, cp.config, name)
        if not views:
            raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
        return views[0]

    def edit_app(
        name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None], message: str
    ) -> str:
        """Commit a change to one app's file; the change returns the new spec, or None to delete."""

        def edit(files: dict[str, bytes]) -> Changes:
            path = _app_path(files, name)
            if path and change is _remove:  # never parse what is being removed
                return {path: None}
            path, data = _existing(files, name)
            new = change(dict(data))
            if new is None:
                return {path: None}
            spec.validate(new, source=path)
            return {path: _dump(new)}

        sha, _ = cp.commit(edit, message, _author())
        # A removed app with nothing left to clean up is already forgotten.
        views = app_views(cp.store, cp.config, name)
        return _json({"app": name, "commit": sha, **(views[0] if views else {})})

    # -- public state ------------------------------------------------------

    @app.get("/api/health")
    def health() -> str:
        cp.store.one("SELECT 1")
        return _json({"status": "ok"})

    @app.get("/api/version")
    def version() -> str:
        return _json({"version": __version__, "api": API_VERSION, "cluster_id": cp.cluster_id})

    @app.get("/api/state/nodes")
    def state_nodes() -> str:
        return _json(nodes_view(cp.store, cp.config))

    @app.get("/api/state/apps")
    def state_apps() -> str:
        return _json(app_views(cp.store, cp.config))

    @app.get("/api/state/sync")
    def state_sync() -> str:
        row = cp.store.one("SELECT value FROM meta WHERE key = 'synced_commit'")
        errors = cp.store.query("SELECT path, message FROM sync_errors ORDER BY path")
        return _json(
            {"head": cp.repo.head(), "synced": row["value"] if row else None, "errors": errors}
        )

    @app.get("/api/events")
    def events() -> str:
        limit = _number_param("limit", 50, 1, 1000)
        return _json(events_view(cp.store, request.query.get("app") or None, int(limit)))

    # -- apps (each a commit to the desired-state repository) --------------

    @app.post("/api/apps")
    def create_app() -> str:
        data = body()
        if not isinstance(data.get("image"), str) or not data["image"].strip():
            raise InvalidSpec('\'image\' is required, e.g. {"image": "nginx:1.25"}')
        data["image"] = spec.with_default_tag(data["image"].strip())
        data.setdefault("name", spec.default_name(data["image"]))
        app_spec = spec.validate(data, source="request")
        name = app_spec.name
        text = app_spec.to_yaml().encode()

        def edit(files: dict[str, bytes]) -> Changes:
            if _app_path(files, name):
                raise Conflict(f"app {name!r} already exists; pick another --name or remove it")
            return {f"{defaults.APPS_DIR}/{name}.yaml": text}

        sha, _ = cp.commit(edit, f"Create app {name} ({app_spec.image})", _author())
        response.status = 201
        return _json({"app": name, "commit": sha, **app_view(name)})

    @app.get("/api/apps/<name>")
    def get_app(name: str) -> str:
        view = app_view(name)
        view["events"] = events_view(cp.store, name, 20)
        return _json(view)

    @app.post("/api/apps/<name>/update")
    def update_app(name: str) -> str:
        changes = body()
        if "name" in changes and changes["name"] != name:
            raise BadRequest("an app cannot be renamed; create a new one instead")
        if "image" in changes and isinstance(changes["image"], str):
            changes["image"] = spec.with_default_tag(changes["image"])
        summary = ", ".join(f"{k}={v}" for k, v in changes.items())
        return edit_app(name, lambda d: {**d, **changes}, f"Update app {name}: {summary}")

    @app.post("/api/apps/<name>/stop")
    def stop_app(name: str) -> str:
        return edit_app(name, lambda d: {**d, "state": "stopped"}, f"Stop app {name}")

    @app.post("/api/apps/<name>/start")
    def start_app(name: str) -> str:
        return edit_app(name, lambda d: {**d, "state": "running"}, f"Start app {name}")

    @app.delete("/api/apps/<name>")
    def delete_app(name: str) -> str:
        return edit_app(name, _remove, f"Remove app {name}")

    @app.get("/api/apps/<name>/revisions")
    def revisions(name: str) -> str:
        app_view(name)
        return _json(revisions_view(cp.store, name))

    # -- agents ------------------------------------------------------------

    @app.post("/api/agents/register")
    def register() -> str:
        reg = parse(Registration, body())
        with cp.store.write() as db:
            node_id, token = nodes.register(db, reg.engine_id, reg.name, reg.info)
        cp.wake()
        return _json(
            {
                "node_id": node_id,
                "token": token,
                "cluster_id": cp.cluster_id,
                "heartbeat_interval": cp.config.heartbeat_interval,
            }
        )

    @app.post("/api/agents/<node_id>/heartbeat")
    def heartbeat(node_id: str) -> str:
        authenticated(node_id)
        data = body()
        with cp.store.write() as db:
            changed = nodes.heartbeat(db, node_id, data)
        if changed:
            cp.wake()
        return _json({"status": "ok"})

    @app.get("/api/agents/<node_id>/tasks")
    def agent_tasks(node_id: str) -> str:
        token = authenticated(node_id)
        wait = _number_param("wait", 0, 0, defaults.LONG_POLL_MAX)
        return _json({"tasks": cp.lease_tasks(node_id, token, wait)})

    @app.post("/api/agents/<node_id>/tasks/<task_id:int>")
    def agent_report(node_id: str, task_id: int) -> str:
        authenticated(node_id)
        data = body()
        with cp.store.write() as db:
            outcome = tasks.report(db, node_id, task_id, data, cp.config.task_lease)
        cp.wake()
        return _json(outcome)

    # -- errors outside any route -------------------------------------------

    def http_error(err: HTTPError) -> str:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(err.status_code, str(err.body))
        return _error_body(err.status_code, code, message)

    for status in (400, 404, 405, 413, 500):
        app.error_handler[status] = http_error
    return app


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
