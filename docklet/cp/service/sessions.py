"""Dashboard sessions: an API token pasted once, then a cookie until the session expires.

`Sessions` signs a browser in with an API token (the same check as the API's
Bearer auth, `Tokens.authenticate`, and the same failure count: a wrong token
here counts toward the address's limit, and past it is answered 429), keeps
the session in SQLite (store/sessions.py: a CP restart keeps it), and finds it
again from the cookie's id. A session is worth what its token is worth at each
request: a revoked token's sessions are gone (the table cascades), an expired
session is forgotten when next seen. The HTTP side (cookies, forms, CSRF and
Origin checks) is docklet/cp/ui/session.py's.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

from docklet.common import defaults
from docklet.common.errors import RateLimited, Unauthorized
from docklet.common.status import Access, TokenScope
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.metrics import Metrics
from docklet.cp.service.tokens import Tokens
from docklet.cp.settings import CPConfig
from docklet.cp.store import sessions
from docklet.cp.store.db import Store


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its token's name and scope, its CSRF token, when it ends."""

    name: str
    scope: str
    csrf: str
    expires_at: float

    @property
    def admin(self) -> bool:
        return self.scope == TokenScope.ADMIN


class Sessions:
    """Sign-in, the session behind a cookie, sign-out."""

    def __init__(
        self,
        store: Store,
        config: CPConfig,
        tokens: Tokens,
        metrics: Metrics,
        liveness: Liveness,
    ) -> None:
        self.store, self.config = store, config
        self.tokens, self.metrics, self.liveness = tokens, metrics, liveness

    def sign_in(self, secret: str, address: str) -> tuple[str, Session]:
        """A new session for the API token `secret`: the cookie's id and the session.

        Raises Unauthorized for a token that is not one (counted against
        `address`), RateLimited past the address's limit.
        """
        try:
            caller = self.tokens.authenticate(secret, Access.READ)
        except Unauthorized:
            self._failed(address, guessed=bool(secret))
            raise
        session_id, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
        lifetime = self.config.ui_session_time
        with self.store.write() as db:
            sessions.prune(db, now)
            sessions.create(
                db,
                session_id,
                secret,
                csrf,
                now=now,
                lifetime=lifetime,
                keep=defaults.UI_SESSIONS_PER_TOKEN,
            )
        return session_id, Session(caller.name, caller.scope, csrf, now + lifetime)

    def _failed(self, address: str, guessed: bool) -> None:
        """http/auth.py's `failed`, for a sign-in: 429 past the limit, else counted."""
        wait = self.tokens.limiter.retry_after(address)
        if wait is not None:
            self.metrics.auth_failed(limited=True)
            self.liveness.refused(address)
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"too many failed sign-ins from {address}; try again in {seconds}s",
                retry_after=seconds,
            )
        self.metrics.auth_failed(limited=False)
        if guessed:
            self.tokens.limiter.fail(address)

    def find(self, session_id: str, now: float | None = None) -> Session | None:
        """The live session behind a cookie's id; None if none, revoked or expired."""
        if not session_id:
            return None
        row = sessions.lookup(self.store, session_id)
        if row is None:
            return None
        if row["expires_at"] <= (time.time() if now is None else now):
            self.sign_out(session_id)
            return None
        return Session(row["name"], row["scope"], row["csrf"], row["expires_at"])

    def sign_out(self, session_id: str) -> None:
        if session_id:
            with self.store.write() as db:
                sessions.delete(db, session_id)

    def count(self, token_name: str) -> int:
        return sessions.count(self.store, token_name)
