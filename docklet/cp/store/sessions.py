"""Dashboard sessions: a browser signed in with an API token, kept until it expires.

A session is found by the SHA-256 of the random id its cookie carries (the id
itself is never stored, as a token's secret is not), and names its token by the
token's hash: revoking the token deletes its sessions with it (ON DELETE
CASCADE in the schema), so what a session may do is always what its token may,
read from `api_tokens` at each request.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from docklet.cp.store.db import Store
from docklet.cp.store.secret import hash_secret


def create(
    db: sqlite3.Connection,
    session_id: str,
    token_secret: str,
    csrf: str,
    *,
    now: float,
    lifetime: float,
    keep: int,
) -> None:
    """A new session for the token `token_secret`; its oldest beyond `keep` are dropped."""
    token_hash = hash_secret(token_secret)
    db.execute(
        "INSERT INTO ui_sessions (id_hash, token_hash, csrf, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (hash_secret(session_id), token_hash, csrf, now, now + lifetime),
    )
    db.execute(
        "DELETE FROM ui_sessions WHERE token_hash = ? AND id_hash NOT IN"
        " (SELECT id_hash FROM ui_sessions WHERE token_hash = ?"
        "  ORDER BY created_at DESC, rowid DESC LIMIT ?)",
        (token_hash, token_hash, keep),
    )


def lookup(store: Store, session_id: str) -> dict[str, Any] | None:
    """The session with this id and its token's name and scope, or None (none, or revoked)."""
    return store.one(
        "SELECT s.csrf, s.expires_at, t.name, t.scope FROM ui_sessions s"
        " JOIN api_tokens t ON t.token_hash = s.token_hash WHERE s.id_hash = ?",
        (hash_secret(session_id),),
    )


def delete(db: sqlite3.Connection, session_id: str) -> None:
    db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (hash_secret(session_id),))


def prune(db: sqlite3.Connection, now: float) -> int:
    """Forget expired sessions; how many there were."""
    return db.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", (now,)).rowcount


def count(store: Store, token_name: str) -> int:
    """Sessions open for the token named `token_name` (expired ones not yet pruned too)."""
    row = store.one(
        "SELECT COUNT(*) AS n FROM ui_sessions s JOIN api_tokens t"
        " ON t.token_hash = s.token_hash WHERE t.name = ?",
        (token_name,),
    )
    return int(row["n"]) if row else 0
