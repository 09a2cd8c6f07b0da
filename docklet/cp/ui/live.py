"""Live pages: the event stream an open page follows, and the parts of a page it fetches.

An open page listens to `/ui/live` (the event log as Server-Sent Events: the
same `EventStreams` as `GET /api/events`, taking one of its slots); on an
event that concerns it, live.js fetches the parts of the page the event may
have changed (`/ui/apps/<name>/rollouts`, `/ui/parts/apps?...`) and swaps
them in. A burst of events is one fetch per part (the script waits a moment
and fetches once), and the CP renders a part again only when the store has
changed since it last rendered it (`Parts`), so a page left open costs what
changed, not a rebuild per viewer per second. When every stream slot is
taken, the script falls back to fetching its parts every few seconds.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from bottle import Bottle, request, response

from docklet.common.errors import BadRequest, DockletError
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.logstreams import LogQuery
from docklet.cp.service.stream import Stream
from docklet.cp.ui import pages, session
from docklet.cp.ui.app import fragment

T = TypeVar("T")

KEEP = 2.0  # seconds a part is served again unchanged: node liveness moves with time, not writes
MAX_KEPT = 512  # parts and contexts kept at once (least recently used go first)
APP_PARTS = ("summary", "containers", "rollouts", "revisions", "events")
WITH_FORMS = frozenset({"summary", "revisions"})  # their forms carry the viewer's CSRF token
MAX_APP_PARAM = 253


class Parts:
    """What the live parts were made from and what they rendered, kept while the store's
    version holds (and at most KEEP seconds)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.renders = 0  # how many times something was made, not served from here
        self._kept: OrderedDict[Hashable, tuple[int, float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        version = self.cp.store.version  # before reading: a write meanwhile makes it stale
        now = time.monotonic()
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and hit[0] == version and now - hit[1] < KEEP:
                self._kept.move_to_end(key)
                return hit[2]  # type: ignore[no-any-return]
        made = make()
        with self._lock:
            self.renders += 1
            self._kept[key] = (version, now, made)
            self._kept.move_to_end(key)
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        return made


def routes(app: Bottle, cp: ControlPlane) -> None:
    parts = Parts(cp)
    app.config["docklet.parts"] = parts  # tests and the benchmark count its renders
    app.route("/ui/live", "GET", pages.signed_in(cp, functools.partial(live, cp)))
    app.route(
        f"/ui/apps/<name>/<part:re:{'|'.join(APP_PARTS)}>",
        "GET",
        pages.signed_in(cp, functools.partial(app_part, cp, parts)),
    )
    app.route("/ui/apps/<name>/logs", "GET", pages.signed_in(cp, functools.partial(logs, cp)))
    for what, handler in (("apps", apps_part), ("nodes", nodes_part), ("events", events_part)):
        app.route(
            f"/ui/parts/{what}", "GET", pages.signed_in(cp, functools.partial(handler, cp, parts))
        )


def live(cp: ControlPlane, viewer: session.Viewer) -> Stream:
    """The events after the page was rendered (or after Last-Event-ID, on a reconnect)."""
    app = request.query.getunicode("app", default="") or None
    if app is not None and len(app) > MAX_APP_PARAM:
        raise BadRequest(f"app is an app's name, at most {MAX_APP_PARAM} characters long")
    after = cp.streams.start_after(
        request.get_header("Last-Event-ID", ""), request.query.get("after", "")
    )
    stream = cp.streams.open(app, after)
    _event_stream()
    return stream


def _event_stream() -> None:
    response.content_type = "text/event-stream; charset=utf-8"
    response.set_header("Cache-Control", "no-cache")
    response.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once


def logs(cp: ControlPlane, viewer: session.Viewer, name: str) -> Any:
    """The app's containers' lines as Server-Sent Events: the newest `pages.LOG_TAIL` of each, then
    each new one, through the relay `docklet logs -f` reads (`LogStreams`, its slots and
    bounds). A stream that cannot start (no containers, their nodes offline, every slot
    taken) is one `end` event saying why, which the log pane shows: not an error page."""
    try:
        stream: Any = cp.logstreams.open(name, LogQuery(tail=pages.LOG_TAIL, follow=True))
    except DockletError as exc:
        stream = [_sse_event("end", {"reason": exc.message})]
    _event_stream()
    return stream


def _sse_event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _html(text: str) -> str:
    response.content_type = "text/html; charset=utf-8"
    return text


def app_part(cp: ControlPlane, parts: Parts, viewer: session.Viewer, name: str, part: str) -> str:
    """One part of an app's page, as its page shows it (the same template)."""
    ctx = parts.get(("app", name), lambda: pages.app_context(cp, name))
    forms = viewer.csrf if part in WITH_FORMS else ""
    key = ("app-part", name, part, viewer.admin, forms)
    return _html(
        parts.get(key, lambda: fragment(f"_{part}.html", viewer=viewer, csrf=viewer.csrf, **ctx))
    )


def apps_part(cp: ControlPlane, parts: Parts, viewer: session.Viewer) -> str:
    """The apps list's rows and pager, for the filter and page asked."""
    query = pages.list_query()
    ctx = parts.get(("apps", *query), lambda: pages.apps_listing(cp, *query))
    return _html(parts.get(("apps-part", *query), lambda: fragment("_apps.html", **ctx)))


def nodes_part(cp: ControlPlane, parts: Parts, viewer: session.Viewer) -> str:
    query = pages.list_query(pages.NODE_FILTERS)
    ctx = parts.get(("nodes", *query), lambda: pages.nodes_context(cp, *query))
    return _html(parts.get(("nodes-part", *query), lambda: fragment("_nodes.html", **ctx)))


def events_part(cp: ControlPlane, parts: Parts, viewer: session.Viewer) -> str:
    app = pages.event_app()
    return _html(
        parts.get(
            ("events", app), lambda: fragment("_events.html", **pages.events_context(cp, app))
        )
    )
