"""Who is looking at the dashboard: the session cookie, sign-in and sign-out, forged forms.

A browser signs in by pasting an API token once (the API's own check and
failure count: service/sessions.py); it gets a cookie holding a random
session id, HttpOnly (no script reads it), SameSite=Strict (no other site's
page sends it), Path=/ui (the API never sees it: its Bearer auth is
unchanged), Secure when the request came over HTTPS. The session ends at its
absolute expiry (--ui-session-time), at sign-out, or when its token is
revoked, whichever comes first.

A form that changes something carries the session's CSRF token and must come
from the CP's own origin (`Origin`, else `Referer`): SameSite alone leaves
older browsers and sibling subdomains, the two checks close them
(`refuse_forgery`). `next`, where a sign-in leads, is only ever a local /ui
path, never another site.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from bottle import BaseRequest, BaseResponse, HTTPResponse

from docklet.common.errors import Forbidden
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.sessions import Session

COOKIE = "docklet_session"
COOKIE_PATH = "/ui"
SIGNIN = "/ui/signin"
HOME = "/ui/apps"
MAX_COOKIE = 128  # a session id is 43 characters; anything far longer is no id of ours
MAX_NEXT = 512

# A local dashboard path: /ui, or /ui/ and then path characters; no "//" (a network
# path), no backslash (some browsers read it as "/"), no control characters.
_LOCAL = re.compile(r"/ui(/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?")


@dataclass(frozen=True)
class Viewer:
    """The signed-in person as pages see them: the token's name, admin or not, the CSRF token."""

    name: str
    admin: bool
    csrf: str


def viewer(cp: ControlPlane, request: BaseRequest) -> Viewer | None:
    """The viewer behind this request's session cookie; None: not signed in (sign in first)."""
    if "docklet.viewer" not in request.environ:
        session = cp.sessions.find(session_id(request))
        request.environ["docklet.viewer"] = _as_viewer(session) if session else None
    return request.environ["docklet.viewer"]


def _as_viewer(session: Session) -> Viewer:
    return Viewer(session.name, session.admin, session.csrf)


def session_id(request: BaseRequest) -> str:
    value = request.get_cookie(COOKIE) or ""
    return value if len(value) <= MAX_COOKIE else ""


def https(request: BaseRequest) -> bool:
    """Whether the browser came over HTTPS (directly, or to a proxy that says so)."""
    return request.urlparts.scheme.lower() == "https"


def set_cookie(response: BaseResponse, request: BaseRequest, sid: str, lifetime: float) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=https(request),
        max_age=int(lifetime),
    )


def clear_cookie(response: BaseResponse, request: BaseRequest) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=https(request)
    )


# -- where to go --------------------------------------------------------------------------


def safe_next(value: str | None) -> str:
    """`value` if it is a local dashboard path, else the apps page: never another site."""
    if not value or len(value) > MAX_NEXT or not _LOCAL.fullmatch(value):
        return HOME
    parts = urlsplit(value)
    segments = parts.path.split("/")
    if parts.scheme or parts.netloc or "" in segments[1:-1] or {".", ".."} & set(segments):
        return HOME  # "//" (another host, to a browser), or a way out of /ui
    return value


def signin_url(path: str) -> str:
    """The sign-in page, leading back to `path` afterwards."""
    return f"{SIGNIN}?next={quote(safe_next(path), safe='')}"


def see_other(location: str, response: BaseResponse | None = None) -> HTTPResponse:
    """A 303 to a local path (relative: the browser keeps its own scheme and host);
    headers already set on `response` (a cookie) go with it."""
    answer = HTTPResponse(status=303)
    if response is not None:
        for name, value in response.headerlist:
            if name.lower() == "set-cookie":
                answer.add_header(name, value)
    answer.set_header("Location", location)
    answer.set_header("Cache-Control", "no-store")
    return answer


def require(cp: ControlPlane, request: BaseRequest, back: str = "") -> Viewer:
    """The viewer, or a 303 to the sign-in page (raised) that leads back here (or to
    `back`: a form's POST is not a page to come back to)."""
    seen = viewer(cp, request)
    if seen is None:
        raise see_other(signin_url(back or request.fullpath + _query(request)))
    return seen


def _query(request: BaseRequest) -> str:
    query = request.query_string
    return f"?{query}" if query else ""


# -- forged forms --------------------------------------------------------------------------


def own_origin(request: BaseRequest) -> str:
    parts = request.urlparts
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def same_origin(request: BaseRequest) -> bool:
    """Whether the browser says the form came from this CP's own pages.

    `Origin` when sent (every current browser sends it on a POST), else the
    `Referer`'s origin; a POST with neither is refused: a browser that sends
    no Origin for a same-origin form still sends a Referer unless told not to.
    """
    claimed = _header(request, "Origin") or _header(request, "Referer")
    if not claimed or claimed == "null":
        return False
    try:
        parts = urlsplit(claimed)
    except ValueError:
        return False
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}" == own_origin(request)


def _header(request: BaseRequest, name: str) -> str:
    """A header, or "" for one that is not text (Bottle cannot decode it): no origin said."""
    try:
        return request.get_header(name, "")
    except UnicodeError:
        return ""


def csrf_matches(expected: str, given: str | None) -> bool:
    """Constant-time: how much of a guess matched must not show in how long it took."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def refuse_forgery(seen: Viewer, request: BaseRequest, *, admin: bool = True) -> None:
    """Raise Forbidden unless this POST is the signed-in viewer's own form from our own
    pages (the Origin and the CSRF field), and, when `admin`, the viewer may act."""
    if not same_origin(request):
        raise Forbidden(
            "refused: this form did not come from this control plane's own pages (Origin)."
            " Open the dashboard at its own address and try again."
        )
    if not csrf_matches(seen.csrf, request.forms.get("csrf")):
        raise Forbidden(
            "refused: the form's security token is missing or stale. Reload the page and try again."
        )
    if admin and not seen.admin:
        raise Forbidden(
            f"token {seen.name!r} is a read token: it can look, not act. Sign in with an"
            " admin token to do this."
        )


# -- what an action did, shown on the page it leads back to ---------------------------------


@dataclass(frozen=True)
class Flash:
    """An action's outcome, shown once on the page the action led back to."""

    ok: bool
    text: str


MAX_FLASH = 300


def flash_query(seen: Viewer, ok: bool, text: str) -> str:
    """The query string carrying an outcome to the next page, signed with the session's
    CSRF token: a link someone else made cannot put words on a viewer's page."""
    text = text[:MAX_FLASH]
    kind = "ok" if ok else "error"
    return f"{kind}={quote(text, safe='')}&sig={_flash_sig(seen, kind, text)}"


def flash(seen: Viewer | None, request: BaseRequest) -> Flash | None:
    """The outcome this page was sent with (see `flash_query`), if its signature holds."""
    if seen is None:
        return None
    for kind in ("ok", "error"):
        text = request.query.getunicode(kind)
        if text is not None:
            sig = request.query.get("sig", "")
            expected = _flash_sig(seen, kind, text[:MAX_FLASH])
            good = hmac.compare_digest(expected.encode(), sig.encode())
            return Flash(kind == "ok", text[:MAX_FLASH]) if good else None
    return None


def _flash_sig(seen: Viewer, kind: str, text: str) -> str:
    digest = hmac.new(seen.csrf.encode(), f"{kind}\0{text}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]
