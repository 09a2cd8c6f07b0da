"""The access check every route passes, driven by the route table's `Access`.

One function decides, per call, whether the caller's credentials allow the
route: public routes need none, user routes an API token (of scope admin for
writes), agent routes the node's own token. Failed credentials are counted
per source address (service/limiter.py): past `auth_failures` a minute, the
address's failed credentials get 429 with Retry-After instead of 401. A
credential that passes is served whatever its address's count: that count is
other people's failures (the agents on the CP's host, everyone behind one
proxy or NAT share an address), and a token of 256 random bits is no guess
(`failed` is the one rule; the API and Git over HTTP both call it).
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


def failed(cp: ControlPlane, address: str, guessed: bool) -> None:
    """Call when a request's credential failed, before answering it 401.

    Past the address's limit this raises RateLimited (429, Retry-After)
    instead; `guessed` (a credential was sent, not none) counts the failure.
    A 429 to an address nodes speak from makes the CP deaf for a moment
    (Liveness.refused): it may have been a heartbeat, so no node's silence counts.
    """
    try:
        refuse_if_limited(cp.tokens.limiter, address)
    except RateLimited:
        cp.metrics.auth_failed(limited=True)
        cp.liveness.refused(address)
        raise
    cp.metrics.auth_failed(limited=False)
    if guessed:
        cp.tokens.limiter.fail(address)


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
