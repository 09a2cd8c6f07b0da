"""What an admin may do from an app's page: roll back, retry, stop, start, scale.

Each action is a form POST to `/ui/apps/<name>/<verb>` and calls the same
service method as the API route the CLI calls (`cp.apps.rollback`, `retry`,
`set_state`, `update`), so it commits to the repository like any other
change, with the signed-in token as its author. Before that, the request must
be the viewer's own form (`session.refuse_forgery`: the CP's own Origin, the
session's CSRF token) and the viewer's token admin; otherwise 403. The answer
is a 303 back to the app's page carrying the outcome (`session.flash_query`);
a refusal of the change itself (no such revision, replicas out of range, nothing
to retry) is that outcome, said on the page, never a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from bottle import Bottle, request

from docklet.common.errors import BadRequest, DockletError
from docklet.cp.desired.spec import SpecState
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.tokens import Author
from docklet.cp.ui import session
from docklet.cp.ui.signin import bounded

log = logging.getLogger(__name__)

_REVISION = re.compile(r"v?([0-9]{1,9})")
_REPLICAS = re.compile(r"[0-9]{1,4}")

Action = Callable[[ControlPlane, str, Author], str]


def rollback(cp: ControlPlane, name: str, author: Author) -> str:
    raw = (request.forms.getunicode("revision") or "").strip()
    match = _REVISION.fullmatch(raw)
    if raw and not match:
        raise BadRequest(f"{raw[:20]!r} is not a revision: pick one such as v2 from the list")
    to = int(match.group(1)) if match else None
    done = cp.apps.rollback(name, to, author)
    return f"Rolling back to v{to}" if to else f"Rolling back ({_commit(done)})"


def retry(cp: ControlPlane, name: str, author: Author) -> str:
    cp.apps.retry(name, author)
    return "Retrying the held or failed revision"


def stop(cp: ControlPlane, name: str, author: Author) -> str:
    cp.apps.set_state(name, SpecState.STOPPED, author)
    return f"Stopping {name}"


def start(cp: ControlPlane, name: str, author: Author) -> str:
    cp.apps.set_state(name, SpecState.RUNNING, author)
    return f"Starting {name}"


def scale(cp: ControlPlane, name: str, author: Author) -> str:
    raw = (request.forms.getunicode("replicas") or "").strip()
    if not _REPLICAS.fullmatch(raw):
        raise BadRequest(f"replicas must be a whole number such as 3, not {raw[:20]!r}")
    cp.apps.update(name, {"replicas": int(raw)}, author)
    return f"Scaling {name} to {int(raw)} replicas"


def _commit(done: dict[str, Any]) -> str:
    sha = done.get("commit")
    return f"commit {sha[:8]}" if sha else "nothing changed"


ACTIONS: dict[str, Action] = {
    "rollback": rollback,
    "retry": retry,
    "stop": stop,
    "start": start,
    "scale": scale,
}


def act(cp: ControlPlane, name: str, verb: str) -> None:
    """Run one action for the signed-in admin and lead back to the app's page."""
    bounded()
    page = f"/ui/apps/{quote(name, safe='')}"
    seen = session.require(cp, request, back=page)
    session.refuse_forgery(seen, request)
    cp.views.app(name)  # an unknown app is the 404 page, not a flash on a page that is not
    try:
        ok, said = True, ACTIONS[verb](cp, name, Author(seen.name))
    except DockletError as exc:  # the change refused: said on the page, as the CLI says it
        ok, said = False, exc.message
    log.info("ui: %s of app %s by token %r: %s", verb, name, seen.name, said)
    raise session.see_other(f"{page}?{session.flash_query(seen, ok, said)}")


def routes(app: Bottle, cp: ControlPlane) -> None:
    for verb in ACTIONS:
        app.route(f"/ui/apps/<name>/{verb}", "POST", lambda name, verb=verb: act(cp, name, verb))
