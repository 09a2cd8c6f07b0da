"""The dashboard's web app: `/` and `/ui/...`, HTML pages next to the API, in the CP process.

`make_ui(cp, *hooks)` builds the Bottle app; each hook (`pages.routes`,
`live.routes`, and the sign-in and action modules') adds its routes to it.
`Dashboard` puts it in front of the API: a request for `/` or under `/ui/`
goes to the pages, anything else to the API exactly as before. Every answer
of the pages carries the security headers (a strict Content-Security-Policy:
no inline script or style, nothing from another origin), set in one place,
`Dashboard`, so a redirect, an error page and a static file carry them too.
Errors are HTML pages with their status, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from bottle import Bottle, HTTPError, HTTPResponse, redirect, request, response, static_file

from docklet.common.errors import DockletError
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.metrics import Measured

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
PREFIX = "/ui/"
HOME = "/ui/apps"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors' older twin
)
NO_STORE = ("Cache-Control", "no-store")  # a page shows what one viewer may see, now

Hook = Callable[[Bottle, ControlPlane], None]


# -- templates ------------------------------------------------------------------------


def _ago(at: float | None) -> str:
    """How long ago `at` was, in the largest unit that says it ("5s", "3m", "2h", "4d")."""
    if not at:
        return "never"
    secs = max(0, int(time.time() - at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _when(at: float | None) -> str:
    """A time as UTC, to the second: the same on every viewer's screen."""
    if not at:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: app names and commits are input
        undefined=jinja2.StrictUndefined,  # a misspelt name is a test failure, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates change with the package, not while it runs
    )
    env.filters.update(ago=_ago, when=_when, short=lambda sha: (sha or "")[:10])
    return env


TEMPLATES = _environment()


def render(template: str, **ctx: Any) -> str:
    """The template filled with `ctx`, as this request's HTML answer.

    Pages pass `viewer` and `csrf` (every template gets them: the layout shows
    who is signed in, forms carry the CSRF token); an error page may have none.
    """
    response.content_type = "text/html; charset=utf-8"
    ctx.setdefault("viewer", None)
    ctx.setdefault("csrf", "")
    ctx.setdefault("flash", None)
    return TEMPLATES.get_template(template).render(**ctx)


def fragment(template: str, **ctx: Any) -> str:
    """A template's text without touching the answer (a cached partial, a page's part)."""
    return TEMPLATES.get_template(template).render(**ctx)


# -- errors ---------------------------------------------------------------------------

_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Busy",
}


def error_page(status: int, message: str) -> str:
    response.status = status
    title = _TITLES.get(status, "Error")
    return render("error.html", status=status, title=title, message=message)


def html_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: a DockletError is an HTML page with its status and message;
    anything else a logged 500 whose page says where the details are."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except DockletError as exc:
            if "retry_after" in exc.details:
                response.set_header("Retry-After", str(exc.details["retry_after"]))
            return error_page(exc.status, exc.message)
        except HTTPResponse:
            raise
        except Exception:
            log.exception("%s %s: internal error", request.method, request.path)
            return error_page(500, "The control plane's log has the details.")

    return wrapper


def _router_error(err: HTTPError) -> str:
    """What Bottle's router answers itself (no such page, wrong method)."""
    message = {
        404: f"There is no page at {request.path}.",
        405: f"{request.method} is not allowed on {request.path}.",
    }.get(err.status_code, str(err.body))
    return error_page(err.status_code, message)


# -- the app --------------------------------------------------------------------------


def home() -> None:
    redirect(HOME, 303)


def static(filename: str) -> Any:
    answer = static_file(filename, root=str(STATIC))
    if answer.status_code == 200:
        answer.set_header("Cache-Control", "no-cache")  # revalidated: a new version shows
    return answer


def make_ui(cp: ControlPlane, *hooks: Hook) -> Measured:
    """The dashboard's Bottle app: `/`, the static files, and each hook's routes."""
    app = Bottle()
    app.install(html_errors)
    app.route("/", "GET", home)
    app.route("/ui", "GET", home)
    app.route("/ui/", "GET", home)
    app.route("/ui/static/<filename>", "GET", static)
    for hook in hooks:
        hook(app, cp)
    for status in (400, 403, 404, 405, 413, 500):
        app.error_handler[status] = _router_error
    return cp.metrics.measured(app)  # counted and timed in GET /metrics like the API


class Dashboard:
    """WSGI: `/` and `/ui/...` to the dashboard, with its headers; the rest to the API."""

    def __init__(self, ui: Any, api: Any) -> None:
        self.ui, self.api = ui, api

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/", "/ui") and not path.startswith(PREFIX):
            return self.api(environ, start_response)

        def secured(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            names = {name.lower() for name, _ in headers}
            added = [h for h in (*SECURITY_HEADERS, NO_STORE) if h[0].lower() not in names]
            return start_response(status, [*headers, *added], *exc)

        return self.ui(environ, secured)
