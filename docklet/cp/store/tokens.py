"""Credentials the control plane issues: API tokens, the join token, the bootstrap windows.

API tokens are people's (and scripts'): named, scoped `read` or `admin`, shown
once and stored only as SHA-256. The join token lets a new agent register; it
lives in a 0600 file in the data directory (as k3s keeps its server token), so
an admin can show it again. Each kind of secret carries its own prefix, so one
is never mistaken for another (a node token is refused by user endpoints
whatever its hash) and log redaction can recognise them (see `secret`).

The bootstrap windows make a fresh cluster usable without a secret in hand:
the first login gets an admin token, and the first agent joins without the
join token. Each closes at its first use and `bootstrap_window` seconds after
the control plane's very first start, whichever comes first, for good. The
node window also closes once the cluster is claimed (any API token exists):
from then on a stranger's registration would lease the admin's deploy tasks,
secrets included, so joining needs the join token. The seed's order (the CP,
then the first agent, then the first CLI command) is unchanged.

The cluster keeps at least one admin token unless its last one is revoked on
purpose (`force`); the host's operator can always mint one where the data is
(`docklet-cp token create`, docklet/cp/admin.py).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from docklet.common import defaults
from docklet.common.errors import BadRequest, Conflict, Forbidden, NotFound
from docklet.common.status import EventKind, TokenScope
from docklet.cp.store import events, nodes
from docklet.cp.store.db import Store, get_meta, set_meta
from docklet.cp.store.secret import JOIN_PREFIX, USER_PREFIX, hash_secret, new_secret

log = logging.getLogger(__name__)

# Matched whole (fullmatch): `$` would also match before a trailing newline ("ci\n").
_NAME = re.compile(r"[A-Za-z0-9][\w.@+-]{0,63}", re.ASCII)

FIRST_START = "first_started_at"
ADMIN_BOOTSTRAP = "admin_bootstrap_used"
NODE_BOOTSTRAP = "node_bootstrap_used"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            "a token name is 1-64 letters, digits and . _ @ + -, starting with a letter or digit"
        )
    return name


# -- API tokens ------------------------------------------------------------------


def create(
    db: sqlite3.Connection, name: str, scope: TokenScope, by: str, *, secret: str | None = None
) -> str:
    """A new token; the secret is returned once and kept only as its hash."""
    check_name(name)
    if db.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone():
        raise Conflict(f"a token named {name!r} exists (docklet token revoke {name} first)")
    secret = secret or new_secret(USER_PREFIX)
    db.execute(
        "INSERT INTO api_tokens (name, token_hash, scope, created_by, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (name, hash_secret(secret), scope, by, time.time()),
    )
    events.record(db, EventKind.TOKEN, f"token {name!r} ({scope}) created by {by}")
    # Any token means the cluster has been claimed: the admin window never reopens.
    set_meta(db, ADMIN_BOOTSTRAP, str(time.time()))
    return secret


def revoke(db: sqlite3.Connection, name: str, by: str, *, force: bool = False) -> None:
    """Revoke a token; the last admin token only when `force`d (no API call could
    make another: only the host's operator, offline)."""
    row = db.execute("SELECT scope FROM api_tokens WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no token named {name!r} (docklet token list)")
    if row[0] == TokenScope.ADMIN and not force and _admins(db) == 1:
        raise Conflict(
            f"token {name!r} is the last admin token: without it no one can change this"
            " cluster through the API. Create another first (docklet token create NAME"
            f" --scope admin), or revoke it anyway with --force (docklet token revoke {name}"
            " --force); the host's operator can always mint one with docklet-cp token create"
            " --data-dir DIR NAME --scope admin"
        )
    db.execute("DELETE FROM api_tokens WHERE name = ?", (name,))
    forced = " (the last admin token, forced)" if row[0] == TokenScope.ADMIN and force else ""
    events.record(db, EventKind.TOKEN, f"token {name!r} revoked by {by}{forced}")


def _admins(db: sqlite3.Connection) -> int:
    query = "SELECT COUNT(*) FROM api_tokens WHERE scope = ?"
    return int(db.execute(query, (TokenScope.ADMIN,)).fetchone()[0])


def listing(store: Store) -> list[dict[str, Any]]:
    return store.query(
        "SELECT name, scope, created_by, created_at, last_used_at FROM api_tokens ORDER BY name"
    )


def lookup(store: Store, secret: str) -> dict[str, Any] | None:
    """The token row for `secret`, or None. Looked up by hash: the secret is never stored."""
    if not secret.startswith(USER_PREFIX):
        return None
    return store.one(
        "SELECT name, scope, last_used_at FROM api_tokens WHERE token_hash = ?",
        (hash_secret(secret),),
    )


def touch(db: sqlite3.Connection, name: str, now: float) -> None:
    db.execute("UPDATE api_tokens SET last_used_at = ? WHERE name = ?", (now, name))


def needs_touch(row: dict[str, Any], now: float) -> bool:
    """Whether to record use: at most once a minute, so reads cost no write each."""
    return not row["last_used_at"] or now - row["last_used_at"] > defaults.TOKEN_TOUCH_EVERY


# -- bootstrap windows -----------------------------------------------------------------


def first_start(db: sqlite3.Connection, now: float) -> float:
    """When this cluster's CP first started (recorded now if never)."""
    value = get_meta(db, FIRST_START)
    if value is None:
        set_meta(db, FIRST_START, str(now))
        return now
    return float(value)


def windows(store: Store, window: float, now: float | None = None) -> dict[str, Any]:
    """Whether each bootstrap window is open, and until when: shown by GET /api/version."""
    now = time.time() if now is None else now
    rows = {r["key"]: r["value"] for r in store.query("SELECT key, value FROM meta")}
    closes = float(rows.get(FIRST_START, now)) + window
    claimed = ADMIN_BOOTSTRAP in rows
    any_node = nodes.any_registered(store.reader())
    return {
        "admin": _window(claimed, closes, now),
        "nodes": _window(NODE_BOOTSTRAP in rows or claimed or any_node, closes, now),
    }


def _window(used: bool, closes: float, now: float) -> dict[str, Any]:
    is_open = not used and now < closes
    return {"open": is_open, "closes_at": closes if is_open else None}


def claim_admin(db: sqlite3.Connection, name: str, window: float, by: str) -> str:
    """The first admin token, if the window is still open; it closes here for good."""
    now = time.time()
    if get_meta(db, ADMIN_BOOTSTRAP) is not None:
        raise Forbidden(
            "this cluster already has an admin: ask one for a token"
            " (docklet token create NAME) and use docklet login --token-stdin"
        )
    if now >= first_start(db, now) + window:
        raise Forbidden(
            "the bootstrap window has closed (it lasts --bootstrap-window seconds from the"
            " first start); ask an admin for a token (docklet token create NAME)"
        )
    secret = create(db, name, TokenScope.ADMIN, by)
    log.warning("BOOTSTRAP: admin token %r issued to %s; the admin window is now closed", name, by)
    return secret


def node_window_open(db: sqlite3.Connection, window: float) -> bool:
    """Whether a first agent may still join without the join token: no node yet, the
    cluster not claimed (no API token ever made), and the window's time not over."""
    now = time.time()
    if get_meta(db, NODE_BOOTSTRAP) is not None or get_meta(db, ADMIN_BOOTSTRAP) is not None:
        return False
    return now < first_start(db, now) + window and not nodes.any_registered(db)


def claim_node(db: sqlite3.Connection, window: float, engine: str) -> bool:
    """Whether a first agent may join without the join token; closes the window if so."""
    if not node_window_open(db, window):
        return False
    set_meta(db, NODE_BOOTSTRAP, str(time.time()))
    log.warning(
        "BOOTSTRAP: the first agent (engine %s) joined without a join token; from now on"
        " agents need DOCKLET_JOIN_TOKEN (docklet nodes join-token)",
        engine[:24],
    )
    return True


def close_node_window(db: sqlite3.Connection) -> None:
    if get_meta(db, NODE_BOOTSTRAP) is None:
        set_meta(db, NODE_BOOTSTRAP, str(time.time()))


# -- the join token ----------------------------------------------------------------------


def join_token_path(data_dir: Path) -> Path:
    return data_dir / "join_token"


def join_token(data_dir: Path, *, rotate: bool = False) -> str:
    """The cluster's join token, made on first use (or anew with `rotate`)."""
    path = join_token_path(data_dir)
    if not rotate and path.exists():
        return path.read_text().strip()
    secret = new_secret(JOIN_PREFIX)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return secret


def join_token_ok(data_dir: Path, presented: str) -> bool:
    path = join_token_path(data_dir)
    if not presented or not path.exists():
        return False
    return hmac.compare_digest(path.read_text().strip().encode(), presented.encode())
