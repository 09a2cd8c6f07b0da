"""The dashboard put together: every module's routes on one app, in front of the API.

Kept apart from app.py, which the route modules import (`render`): the one
module that imports them all is this one, so no import goes round in a circle.
"""

from __future__ import annotations

from typing import Any

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.ui import actions, live, pages, signin
from docklet.cp.ui.app import Dashboard, make_ui


def dashboard(cp: ControlPlane, api: Any) -> Dashboard:
    """WSGI: the dashboard at `/` and under `/ui/`, the API (`api`) everywhere else."""
    return Dashboard(make_ui(cp, signin.routes, pages.routes, live.routes, actions.routes), api)
