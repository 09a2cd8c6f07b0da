"""The access check every route passes, driven by the route table's `Access`.

One function decides, per call, whether the caller's credentials allow the
route: public routes need none, user routes an API token (of scope admin for
writes), agent routes the node's own token. Failed credentials are counted
per source address (service/limiter.py): past `auth_failures` a minute, the
address gets 429 with Retry-After whatever it sends, so a token cannot be
guessed at speed.
"""

from __future__ import annotations

import math

from docklet.common.errors import RateLimited, Unauthorized
from docklet.common.status import Access
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.limiter import FailureLimiter
from docklet.cp.service.tokens import Caller


def bearer(authorization: str) -> str:
    return authorization[7:].strip() if authorization.startswith("Bearer ") else ""


def refuse_if_limited(limiter: FailureLimiter, address: str) -> None:
    wait = limiter.retry_after(address)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise RateLimited(
            f"too many failed credentials from {address}; try again in {seconds}s",
            retry_after=seconds,
        )


def check(cp: ControlPlane, access: Access, secret: str, node_id: str = "") -> Caller | None:
    """Raise unless `secret` allows `access`; the user it names, for user routes.

    Public and join routes pass here: registration checks its own credentials.
    """
    if access in (Access.READ, Access.ADMIN):
        if not secret:
            raise missing(access)
        return cp.tokens.authenticate(secret, access)
    if access == Access.NODE:
        if not secret:
            raise missing(access)
        cp.agents.authenticate(node_id, secret)
    return None


def missing(access: Access) -> Unauthorized:
    if access == Access.NODE:
        return Unauthorized("missing node token (Authorization: Bearer); restart the agent")
    return Unauthorized(
        "this endpoint needs an API token: run docklet login, or send Authorization: Bearer"
    )
