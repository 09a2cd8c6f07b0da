"""Credentials: API tokens, the join token, the bootstrap windows, and who a caller is.

`Tokens` serves the /api/tokens, /api/auth and /api/nodes/join-token routes,
and turns an API token into a `Caller` for the HTTP layer's access check
(http/auth.py decides what a route needs; this says what a secret is worth).
An `Author` is who a change is recorded as: the token the CP checked, next to
what its holder says about themselves.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from docklet.common.errors import Forbidden, Unauthorized
from docklet.common.status import Access, TokenScope
from docklet.cp.service.limiter import FailureLimiter
from docklet.cp.settings import CPConfig
from docklet.cp.store import tokens
from docklet.cp.store.db import Store
from docklet.cp.store.secret import NODE_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who made a call: a user token's name and scope, a node, or nobody (public)."""

    kind: str  # "public", "user", "node", "join"
    name: str = ""
    scope: str = ""


@dataclass(frozen=True)
class Author:
    """Who makes a change: the API token the CP checked, and who its holder says they are.

    `said` (the CLI's X-Docklet-User, `user@host`) is a claim anyone with a token
    can make, as a Git author is; `token` is what the CP verified. Commits keep
    the claim as their author, so `docklet history` reads as before, and carry
    the token in a `Docklet-Token:` trailer the CP writes itself; events and the
    CP's log name both.
    """

    token: str  # the API token's name; "" for a bootstrap, which has no token yet
    said: str = ""

    @property
    def git(self) -> str:
        """The commit's author: what the caller says, else the token's name."""
        name = self.said or self.token
        return f"{name} <{name}>" if name else "docklet-api <docklet@localhost>"

    @property
    def trailer(self) -> str:
        return f"Docklet-Token: {one_line(self.token) or '(none)'}"

    def __str__(self) -> str:
        who = f"token {self.token!r}" if self.token else "the bootstrap"
        return f"{who} (says {self.said})" if self.said and self.said != self.token else who


def one_line(text: str) -> str:
    """`text` with control characters (newlines) made spaces: a subject or trailer stays one."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


def user(row: dict[str, object] | None, secret: str, access: Access) -> Caller:
    """The caller for an API token row (None: no such token), checked against `access`."""
    if row is None:
        if secret.startswith(NODE_PREFIX):
            raise Unauthorized("a node token cannot call user endpoints; use an API token")
        raise Unauthorized(
            "the API token is not valid (revoked, or never issued); docklet login again"
        )
    if access == Access.ADMIN and row["scope"] != TokenScope.ADMIN:
        raise Forbidden(f"token {row['name']!r} has scope {row['scope']}; this needs admin")
    return Caller("user", str(row["name"]), str(row["scope"]))


class Tokens:
    """API tokens, the join token and the bootstrap windows; failed credentials' count."""

    def __init__(self, store: Store, config: CPConfig) -> None:
        self.store, self.config = store, config
        self.limiter = FailureLimiter(config.auth_failures)

    def authenticate(self, secret: str, access: Access) -> Caller:
        """The user behind an API token, if it allows `access`; its use noted now and then."""
        row = tokens.lookup(self.store, secret)
        caller = user(row, secret, access)
        now = time.time()
        if row is not None and tokens.needs_touch(row, now):
            with self.store.write() as db:
                tokens.touch(db, caller.name, now)
        return caller

    def windows(self) -> dict[str, Any]:
        return tokens.windows(self.store, self.config.bootstrap_window)

    def bootstrap_admin(self, name: str, by: str) -> str:
        with self.store.write() as db:
            return tokens.claim_admin(db, name, self.config.bootstrap_window, by)

    def listing(self) -> list[dict[str, Any]]:
        return tokens.listing(self.store)

    def create(self, name: Any, scope: TokenScope, by: str) -> str:
        with self.store.write() as db:
            return tokens.create(db, tokens.check_name(name), scope, by)

    def revoke(self, name: str, by: str, *, force: bool = False) -> None:
        with self.store.write() as db:
            tokens.revoke(db, name, by, force=force)

    def join_token(self, *, rotate: bool = False, by: str = "") -> str:
        secret = tokens.join_token(self.config.data_dir, rotate=rotate)
        if rotate:
            log.warning(
                "join token rotated by %s: agents joining from now on need the new one",
                by or "the control plane",
            )
        return secret

    def announce_bootstrap(self, url: str) -> None:
        """Say loudly, at start, which bootstrap window is open and until when."""
        state = self.windows()
        for who, what in (
            ("admin", f"the first `docklet login --cp {url}` gets an admin token"),
            ("nodes", "the first agent joins without a join token"),
        ):
            if state[who]["open"]:
                left = state[who]["closes_at"] - time.time()
                log.warning("BOOTSTRAP window open for %.0f more seconds: %s", left, what)
