"""The access check every route passes, driven by the route table's `Access`.

One function decides, per call, whether the caller's credentials allow the
route: public routes need none, user routes an API token (of scope admin for
writes), agent routes the node's own token. Failed credentials are counted
per source address: past `auth_failures` a minute, the address gets 429 with
Retry-After whatever it sends, so a token cannot be guessed at speed. The
count uses the socket's address, never X-Forwarded-For (which a caller
writes itself); behind a proxy, all callers share the proxy's budget.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass

from docklet.common import defaults
from docklet.common.errors import Forbidden, RateLimited, Unauthorized
from docklet.common.status import Access, TokenScope
from docklet.cp.store import tokens

log = logging.getLogger(__name__)

MAX_ADDRESSES = 10_000  # addresses tracked at once; the oldest are forgotten beyond


@dataclass(frozen=True)
class Caller:
    """Who made a call: a user token's name and scope, a node, or nobody (public)."""

    kind: str  # "public", "user", "node", "join"
    name: str = ""
    scope: str = ""


class FailureLimiter:
    """Failed credentials per address in a sliding minute."""

    def __init__(self, limit: int, period: float = defaults.AUTH_FAILURE_PERIOD) -> None:
        self.limit, self.period = limit, period
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> float | None:
        """Seconds until `address` may try again, or None when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return None
            while times and times[0] <= now - self.period:
                times.popleft()
            if not times:
                del self._failures[address]
                return None
            if len(times) < self.limit:
                return None
            return times[0] + self.period - now

    def fail(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.setdefault(address, collections.deque(maxlen=self.limit))
            times.append(now)
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)


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


def user(row: dict[str, object] | None, secret: str, access: Access) -> Caller:
    """The caller for an API token row (None: no such token), checked against `access`."""
    if row is None:
        if secret.startswith(tokens.NODE_PREFIX):
            raise Unauthorized("a node token cannot call user endpoints; use an API token")
        raise Unauthorized(
            "the API token is not valid (revoked, or never issued); docklet login again"
        )
    if access == Access.ADMIN and row["scope"] != TokenScope.ADMIN:
        raise Forbidden(f"token {row['name']!r} has scope {row['scope']}; this needs admin")
    return Caller("user", str(row["name"]), str(row["scope"]))


def missing(access: Access) -> Unauthorized:
    if access == Access.NODE:
        return Unauthorized("missing node token (Authorization: Bearer); restart the agent")
    return Unauthorized(
        "this endpoint needs an API token: run docklet login, or send Authorization: Bearer"
    )
