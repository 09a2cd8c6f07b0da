"""Secret values (`docklet secret set`): each version sealed by the CP, and who uses which.

Not to be confused with `secret.py`, the tokens the CP issues and keeps only as hashes:
these are values people give the CP to hand to their containers, so they are kept
encrypted (AES-GCM, by `service/secrets.py`), never as plain text. This module sees only
nonces and ciphertexts.

Two tables, this module their only writer: `secret_versions` (one row per version:
name, version, nonce, ciphertext) and `secret_uses` (which revision refers to which
version, written by sync as it records a revision; a revision's removal removes its
rows). The tables are made by migration 6 of `store/db.py`, as every table is.

Every change of a value moves the meta key `secrets_generation` on: a sync compares it
with the one it last synced, so a new value reaches the apps that use it without a commit.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable

from docklet.common.status import DesiredState
from docklet.cp.store.db import get_meta, set_meta

GENERATION = "secrets_generation"  # meta: moves on with every secret written or removed
KEY_CHECK = "secret_key_check"  # meta: which key sealed the values (a keyed hash, not the key)


def generation(db: sqlite3.Connection) -> str:
    """Moves on with every value written or secret removed ("0": none ever)."""
    return get_meta(db, GENERATION) or "0"


def _moved(db: sqlite3.Connection) -> None:
    set_meta(db, GENERATION, str(int(generation(db)) + 1))


def add(db: sqlite3.Connection, name: str, seal: tuple[bytes, bytes], now: float, by: str) -> int:
    """A new version of `name` (1 for a new secret) sealed as (nonce, ciphertext)."""
    row = db.execute(
        "SELECT COALESCE(MAX(version), 0) FROM secret_versions WHERE name = ?", (name,)
    ).fetchone()
    version = int(row[0]) + 1
    db.execute(
        "INSERT INTO secret_versions (name, version, nonce, ciphertext, created_at, created_by)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (name, version, *seal, now, by),
    )
    _moved(db)
    return version


def next_version(db: sqlite3.Connection, name: str) -> int:
    """The version the next value of `name` gets (its number is part of what is sealed)."""
    row = db.execute(
        "SELECT COALESCE(MAX(version), 0) FROM secret_versions WHERE name = ?", (name,)
    ).fetchone()
    return int(row[0]) + 1


def count(db: sqlite3.Connection) -> int:
    """How many secrets (not versions) there are."""
    return int(db.execute("SELECT COUNT(DISTINCT name) FROM secret_versions").fetchone()[0])


def sealed(db: sqlite3.Connection, name: str, version: int) -> tuple[bytes, bytes] | None:
    """(nonce, ciphertext) of one version, None when there is no such version."""
    row = db.execute(
        "SELECT nonce, ciphertext FROM secret_versions WHERE name = ? AND version = ?",
        (name, version),
    ).fetchone()
    return (bytes(row[0]), bytes(row[1])) if row else None


def versions(db: sqlite3.Connection) -> dict[str, list[int]]:
    """Every secret's kept versions, oldest first (no value, no ciphertext)."""
    kept: dict[str, list[int]] = defaultdict(list)
    for name, version in db.execute(
        "SELECT name, version FROM secret_versions ORDER BY name, version"
    ):
        kept[name].append(int(version))
    return dict(kept)


def listing(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Per secret: its newest version, how many are kept, when the first and newest were set."""
    return db.execute(
        "SELECT name, MAX(version) AS version, COUNT(*) AS kept, MIN(created_at) AS created_at,"
        " MAX(created_at) AS updated_at FROM secret_versions GROUP BY name ORDER BY name"
    ).fetchall()


def users(db: sqlite3.Connection, name: str | None = None) -> dict[str, list[str]]:
    """Secret → the apps (not removed) whose current or target revision uses it."""
    only = "" if name is None else " AND u.name = ?"
    rows = db.execute(
        "SELECT DISTINCT u.name, u.app FROM secret_uses u JOIN apps a ON a.name = u.app"
        " WHERE a.desired != ? AND u.number IN"
        " (COALESCE(a.current_revision, 0), COALESCE(a.target_revision, 0))"
        + only
        + " ORDER BY u.name, u.app",
        (DesiredState.REMOVED, *(() if name is None else (name,))),
    )
    found: dict[str, list[str]] = defaultdict(list)
    for secret, app in rows:
        found[secret].append(app)
    return dict(found)


def record_uses(
    db: sqlite3.Connection, app: str, number: int, refs: Iterable[tuple[str, int]]
) -> None:
    """Revision `number` of `app` refers to these (secret, version): they are kept."""
    db.executemany(
        "INSERT OR IGNORE INTO secret_uses (app, number, name, version) VALUES (?, ?, ?, ?)",
        [(app, number, secret, version) for secret, version in refs],
    )


def prune(db: sqlite3.Connection, name: str, keep: int) -> int:
    """Drop the versions of `name` beyond the newest `keep` that no revision refers to."""
    cursor = db.execute(
        "DELETE FROM secret_versions WHERE name = ? AND version NOT IN"
        " (SELECT version FROM secret_versions WHERE name = ? ORDER BY version DESC LIMIT ?)"
        " AND version NOT IN (SELECT version FROM secret_uses WHERE name = ?)",
        (name, name, keep, name),
    )
    return cursor.rowcount


def remove(db: sqlite3.Connection, name: str) -> int:
    """Every version of `name`; how many there were."""
    cursor = db.execute("DELETE FROM secret_versions WHERE name = ?", (name,))
    if cursor.rowcount:
        _moved(db)
    return cursor.rowcount


def every_sealed(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every version's name, number, nonce and ciphertext: what a key rotation re-seals."""
    return db.execute(
        "SELECT name, version, nonce, ciphertext FROM secret_versions ORDER BY name, version"
    ).fetchall()


def reseal(db: sqlite3.Connection, name: str, version: int, seal: tuple[bytes, bytes]) -> None:
    db.execute(
        "UPDATE secret_versions SET nonce = ?, ciphertext = ? WHERE name = ? AND version = ?",
        (*seal, name, version),
    )


def key_check(db: sqlite3.Connection) -> str | None:
    return get_meta(db, KEY_CHECK)


def set_key_check(db: sqlite3.Connection, check: str) -> None:
    set_meta(db, KEY_CHECK, check)


def task_refs(db: sqlite3.Connection, task_id: int) -> str | None:
    """A task's payload (JSON), to find the secrets it carries by name and version."""
    row = db.execute("SELECT payload FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return row[0] if row else None
