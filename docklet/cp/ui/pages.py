"""The dashboard's pages: apps, one app, nodes, events; each a GET at a URL one can share.

A page reads what the CLI reads, through the same services (`cp.views`: the
kept app list `docklet ps` reads, an app's view, its revisions, rollouts and
events, the nodes), and fills a template. The builders here (`apps_listing`,
`app_context`, `nodes_context`, `events_context`) return the template's
context; the live updates (live.py) render the same parts of a page from them.
A page is complete without JavaScript.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bottle import Bottle, request

from docklet.common.errors import BadRequest
from docklet.common.status import AppStatus, ContainerState, EventKind, NodeStatus, RolloutStatus
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.ui import session
from docklet.cp.ui.app import render

PAGE_SIZE = 50  # rows a list shows a page: what a page renders stays small at any size
MAX_PAGE = 10_000
MAX_QUERY = 100  # characters of a filter: longer than any app name
HELD = "held"  # a filter beside the app statuses: a revision waits for `rollout retry`
STATUS_FILTERS = (*(s.value for s in AppStatus), HELD)
APP_EVENTS = 30  # events an app's page shows
EVENTS = 100  # events the events page shows
REVISIONS = 30  # revisions an app's page lists (newest first)
ROLLOUTS = 10  # rollouts an app's page lists (newest first; the newest with its timeline)
PHASE_EVENTS = 200  # the app's events read to date a rollout's phases
LOG_TAIL = 100  # lines of each container the log pane starts with

Handler = Callable[..., Any]


# -- who is looking -------------------------------------------------------------------


def signed_in(cp: ControlPlane, handler: Handler) -> Handler:
    """The handler with the viewer as its first argument; without a session, 303 to the
    sign-in page, which leads back here (path and query) once signed in."""

    @functools.wraps(handler)
    def wrapper(**kwargs: Any) -> Any:
        return handler(session.require(cp, request), **kwargs)

    return wrapper


def page(
    cp: ControlPlane, template: str, viewer: session.Viewer, build: Callable[[], dict[str, Any]]
) -> str:
    """A whole page: what every page shows (who is looking, an action's outcome), what
    `build` reads, and where its live stream starts: after the newest event read before it,
    so nothing that happened while the page was built is missed (at worst heard twice)."""
    after = cp.streams.start_after("", "")
    ctx = build()
    flash = session.flash(viewer, request)
    return render(template, viewer=viewer, csrf=viewer.csrf, flash=flash, after=after, **ctx)


def routes(app: Bottle, cp: ControlPlane) -> None:
    """The pages' GET routes (live.py adds the parts they refresh)."""
    app.route("/ui/apps", "GET", signed_in(cp, functools.partial(apps_page, cp)))
    app.route("/ui/apps/<name>", "GET", signed_in(cp, functools.partial(app_page, cp)))
    app.route("/ui/nodes", "GET", signed_in(cp, functools.partial(nodes_page, cp)))
    app.route("/ui/events", "GET", signed_in(cp, functools.partial(events_page, cp)))


# -- the pages ------------------------------------------------------------------------


def apps_page(cp: ControlPlane, viewer: session.Viewer) -> str:
    query = list_query()
    return page(cp, "apps.html", viewer, lambda: apps_listing(cp, *query))


def app_page(cp: ControlPlane, viewer: session.Viewer, name: str) -> str:
    return page(cp, "app.html", viewer, lambda: app_context(cp, name))


def nodes_page(cp: ControlPlane, viewer: session.Viewer) -> str:
    query = list_query(NODE_FILTERS)
    return page(cp, "nodes.html", viewer, lambda: nodes_context(cp, *query))


def events_page(cp: ControlPlane, viewer: session.Viewer) -> str:
    app = event_app()
    return page(cp, "events.html", viewer, lambda: events_context(cp, app))


# -- the apps list ------------------------------------------------------------------------


def list_query(statuses: tuple[str, ...] = STATUS_FILTERS) -> tuple[str, str, int]:
    """A list's `q`, `status` (one of `statuses`) and `page`, checked: a bad one is a 400 page."""
    q = request.query.getunicode("q", default="") or ""
    if len(q) > MAX_QUERY:
        raise BadRequest(f"the filter is at most {MAX_QUERY} characters long")
    status = request.query.getunicode("status", default="") or ""
    if status and status not in statuses:
        raise BadRequest(f"status is one of {', '.join(statuses)}, not {status[:40]!r}")
    raw = request.query.get("page", "") or "1"
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:6]) <= MAX_PAGE):
        raise BadRequest(f"page is a number from 1 to {MAX_PAGE}, not {raw[:20]!r}")
    return q.strip(), status, int(raw)


def paged(found: list[Any], q: str, status: str, page: int, url: str) -> dict[str, Any]:
    """Page `page` of a filtered list (the last, if past it), and what its pager links to."""
    pages = max(1, -(-len(found) // PAGE_SIZE))
    page = min(page, pages)
    return {
        "shown": found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        "total": len(found),
        "page": page,
        "pages": pages,
        "q": q,
        "status": status,
        "query": _query_string(q, status),
        "list_url": url,
    }


def apps_listing(cp: ControlPlane, q: str, status: str, page: int) -> dict[str, Any]:
    """One page of the apps list, filtered by name (`q`, a part of it) and `status`.

    Read from the brief list `docklet ps` reads, kept while nothing changed and
    rebuilt once for all of its readers when something did: each app's
    containers are counted there, not listed (at 10,000 containers the full
    list costs several times as much to build). An app's own page lists them.
    """
    found = [a for a in cp.views.apps(brief=True) if _matches(a, q.lower(), status)]
    listing = paged(found, q, status, page, "/ui/apps")
    return {**listing, "apps": [_app_row(a) for a in listing["shown"]], "statuses": STATUS_FILTERS}


def _matches(app: dict[str, Any], q: str, status: str) -> bool:
    if q and q not in app["name"]:
        return False
    if status == HELD:
        return app["held"] is not None
    return not status or app["status"] == status


def _query_string(q: str, status: str) -> str:
    """The filter as a query string a pager link keeps (empty parts left out)."""
    parts = [f"q={quote(q, safe='')}" if q else "", f"status={status}" if status else ""]
    return "&".join(p for p in parts if p)


def _app_row(app: dict[str, Any]) -> dict[str, Any]:
    """What a row of the apps list shows: desired next to actual, where, and why not."""
    return {**app, "reason": reason(app)}


def per_node(app: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(node, containers running the wanted revision, containers) on each node the app is on."""
    counts: dict[str, list[int]] = {}
    for i in app.get("instances", []):
        seen = counts.setdefault(i["node_id"], [0, 0])
        seen[0] += i["state"] == ContainerState.RUNNING and i["up_to_date"]
        seen[1] += 1
    for node in app["nodes"]:
        counts.setdefault(node, [0, 0])
    return [(node, up, total) for node, (up, total) in sorted(counts.items())]


def reason(app: dict[str, Any]) -> str:
    """Why the app is not as desired, in one line ("" when nothing is wrong)."""
    if app["held"]:
        return f"held: {app['held']}"
    if app["sync_error"]:
        return f"its file is invalid: {app['sync_error']}"
    rollout = app["rollout"]
    if rollout and rollout["reason"] and app["status"] != AppStatus.STABLE:
        return str(rollout["reason"])
    if app["errors"]:
        return str(app["errors"][0].get("error") or "a deploy failed")
    return str(app["last_error"] or "") if app["status"] == AppStatus.FAILED else ""


# -- one app ------------------------------------------------------------------------------


def app_context(cp: ControlPlane, name: str) -> dict[str, Any]:
    """Everything an app's page shows; NotFound (a 404 page) for an app that is not there."""
    view = cp.views.app(name)
    revisions = cp.views.revisions(name)
    rollouts = cp.views.rollouts(name)[:ROLLOUTS]
    app_events = cp.views.events(name, PHASE_EVENTS)
    for r in rollouts:
        r["phases"] = phases(r, app_events)
    return {
        "app": view,
        "reason": reason(view),
        "per_node": per_node(view),
        "by_node": containers_by_node(view),
        "revisions": revisions[:REVISIONS],
        "older_revisions": max(0, len(revisions) - REVISIONS),
        "log_tail": LOG_TAIL,
        "rollouts": rollouts,
        "events": app_events[-APP_EVENTS:][::-1],
        "now": time.time(),
    }


def containers_by_node(view: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    nodes: dict[str, list[dict[str, Any]]] = {}
    for i in view.get("instances", []):
        nodes.setdefault(i["node_id"], []).append(i)
    return sorted(nodes.items())


@dataclass(frozen=True)
class Phase:
    """One step of a rollout's timeline: its status, when it began, and how it went."""

    status: str
    at: float | None  # None: not reached (yet)
    state: str  # "done", "current", "failed" or "next"


_TRANSITION = re.compile(r"^(\w+) → (\w+)")
_AHEAD = {  # the phases still to come after each live status, on the path it is on
    RolloutStatus.PENDING: ("canary", "verifying", "promoting", "stable"),
    RolloutStatus.CANARY: ("verifying", "promoting", "stable"),
    RolloutStatus.VERIFYING: ("promoting", "stable"),
    RolloutStatus.PROMOTING: ("stable",),
    RolloutStatus.ROLLING_BACK: ("rolled_back",),
}
_BAD_ENDS = {RolloutStatus.FAILED, RolloutStatus.ROLLBACK_FAILED, RolloutStatus.ROLLED_BACK}


def phases(rollout: dict[str, Any], app_events: list[dict[str, Any]]) -> list[Phase]:
    """The rollout's phases, oldest first, dated by its transitions in the event log
    (an event a pruned log lost leaves its phase undated); then the ones still ahead."""
    prefix = f"app {rollout['app']}: rollout {rollout['id']} "
    reached: list[tuple[str, float | None]] = [("pending", rollout["created_at"])]
    for e in app_events:
        if e["kind"] != EventKind.ROLLOUT or not e["message"].startswith(prefix):
            continue
        note = e["message"][len(prefix) :].partition(": ")[2]
        moved = _TRANSITION.match(note)
        if moved and moved[2] != reached[-1][0]:
            reached.append((moved[2], e["at"]))
    status = RolloutStatus(rollout["status"])
    if reached[-1][0] != status:
        reached.append((status.value, None if not status.is_terminal else rollout["finished_at"]))
    last = len(reached) - 1
    steps = [
        Phase(s, at, _state(i == last, status, s, rollout)) for i, (s, at) in enumerate(reached)
    ]
    return steps + [Phase(s, None, "next") for s in _AHEAD.get(status, ())]


def _state(is_last: bool, status: RolloutStatus, phase: str, rollout: dict[str, Any]) -> str:
    if phase == rollout["failed_phase"] or (is_last and status in _BAD_ENDS):
        return "failed"
    if is_last and not status.is_terminal:
        return "current"
    return "done"


# -- nodes and events -----------------------------------------------------------------


NODE_FILTERS = tuple(s.value for s in NodeStatus)


def nodes_context(cp: ControlPlane, q: str = "", status: str = "", page: int = 1) -> dict[str, Any]:
    """One page of the nodes, filtered by a part of their id or host name and by status."""
    q_lower = q.lower()
    found = [
        n
        for n in cp.views.nodes()
        if (not q or q_lower in n["node_id"].lower() or q_lower in n["hostname"].lower())
        and (not status or n["status"] == status)
    ]
    listing = paged(found, q, status, page, "/ui/nodes")
    return {**listing, "nodes": listing["shown"], "statuses": NODE_FILTERS}


def event_app() -> str:
    """The events page's `app` filter ("" for every app's events), checked."""
    app = request.query.getunicode("app", default="") or ""
    if len(app) > MAX_QUERY:
        raise BadRequest(f"app is an app's name, at most {MAX_QUERY} characters long")
    return app


def events_context(cp: ControlPlane, app: str = "") -> dict[str, Any]:
    """The newest events (of `app`, if given), newest first."""
    return {"events": cp.views.events(app or None, EVENTS)[::-1], "event_app": app}
