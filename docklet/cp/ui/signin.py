"""The sign-in page, sign-in and sign-out: `GET/POST /ui/signin`, `POST /ui/signout`.

A token is pasted once into a plain form (no script needed) and checked as the
API checks it (service/sessions.py); what the browser keeps is the session
cookie, never the token. The form's answer is the form again with what went
wrong (401, 429 with Retry-After), or a 303 to where the viewer was going.
"""

from __future__ import annotations

import logging
import time

from bottle import Bottle, request, response

from docklet.common import defaults
from docklet.common.errors import DockletError, Forbidden, RateLimited, TooLarge
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.ui import session
from docklet.cp.ui.app import render

log = logging.getLogger(__name__)

MAX_TOKEN = 200  # an API token is 48 characters; a longer paste is not one


def form(cp: ControlPlane) -> str:
    """The sign-in form; a signed-in viewer goes straight on to `next`."""
    target = session.safe_next(request.query.getunicode("next"))
    if session.viewer(cp, request) is not None:
        raise session.see_other(target)
    return render("signin.html", next=target, error="")


def sign_in(cp: ControlPlane) -> str:
    """Check the pasted token; a session cookie and a 303 on, or the form with the reason."""
    bounded()
    target = session.safe_next(request.forms.getunicode("next"))
    if not session.same_origin(request):
        raise Forbidden("refused: this sign-in form did not come from this control plane's page")
    token = (request.forms.getunicode("token") or "").strip()[:MAX_TOKEN]
    address = request.environ.get("REMOTE_ADDR") or "unknown"
    try:
        sid, signed = cp.sessions.sign_in(token, address)
    except DockletError as exc:
        return _refused(exc, target, address)
    cp.sessions.sign_out(session.session_id(request))  # a session this browser had ends
    log.info("ui: token %r signed in from %s", signed.name, address)
    session.set_cookie(response, request, sid, signed.expires_at - time.time())
    raise session.see_other(target, response)


def _refused(exc: DockletError, target: str, address: str) -> str:
    log.warning("ui: a sign-in from %s refused: %s", address, exc)
    response.status = exc.status
    if isinstance(exc, RateLimited):
        response.set_header("Retry-After", str(exc.details["retry_after"]))
    message = exc.message if exc.status != 401 else _wrong_token(exc.message)
    return render("signin.html", next=target, error=message)


def _wrong_token(message: str) -> str:
    return f"{message.split(';')[0]}. Paste an API token (docklet token create NAME makes one)."


def sign_out(cp: ControlPlane) -> None:
    """End this browser's session (from its own page's form) and forget the cookie."""
    bounded()
    seen = session.viewer(cp, request)
    if seen is not None:
        session.refuse_forgery(seen, request, admin=False)
        cp.sessions.sign_out(session.session_id(request))
        log.info("ui: token %r signed out", seen.name)
    session.clear_cookie(response, request)
    raise session.see_other(session.SIGNIN, response)


def bounded() -> None:
    """A form's body is small: a token, a few fields. Anything larger is refused unread."""
    length = request.content_length  # -1: none said, and a chunked body's size is unknown
    chunked = "HTTP_TRANSFER_ENCODING" in request.environ
    if length > defaults.UI_SIGNIN_MAX_BODY or (length < 0 and chunked):
        raise TooLarge(f"a form's body is at most {defaults.UI_SIGNIN_MAX_BODY} bytes")


def routes(app: Bottle, cp: ControlPlane) -> None:
    app.route(session.SIGNIN, "GET", lambda: form(cp))
    app.route(session.SIGNIN, "POST", lambda: sign_in(cp))
    app.route("/ui/signout", "POST", lambda: sign_out(cp))
