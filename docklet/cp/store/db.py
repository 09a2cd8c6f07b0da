"""SQLite: the only place the control plane keeps state.

One writer at a time (a lock around one connection, every write an explicit
`BEGIN IMMEDIATE` transaction); readers get a connection per thread and, with
WAL, never wait for the writer. Schema changes are numbered migrations
recorded in `schema_migrations`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        desired TEXT NOT NULL,
        current_revision INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE revisions (
        app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        container_hash TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        author TEXT NOT NULL,
        message TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (app, number)
    );
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        engine_id TEXT NOT NULL UNIQUE,
        hostname TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        last_seen REAL NOT NULL,
        registered_at REAL NOT NULL,
        docker_ok INTEGER NOT NULL DEFAULT 1,
        docker_error TEXT,
        report_seq INTEGER NOT NULL DEFAULT 0,
        info TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE placements (
        app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        node_id TEXT NOT NULL REFERENCES nodes(node_id),
        PRIMARY KEY (app, slot)
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL REFERENCES nodes(node_id),
        app TEXT NOT NULL,
        revision INTEGER,
        kind TEXT NOT NULL,
        slot INTEGER,
        container TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        lease_token TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lost INTEGER NOT NULL DEFAULT 0,
        container_id TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX tasks_by_node ON tasks(node_id, status);
    CREATE INDEX tasks_by_app ON tasks(app, slot, id);
    CREATE TABLE containers (
        node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
        container_id TEXT NOT NULL,
        name TEXT NOT NULL,
        app TEXT NOT NULL,
        revision INTEGER,
        slot INTEGER,
        container_hash TEXT,
        image TEXT NOT NULL,
        state TEXT NOT NULL,
        health TEXT,
        exit_code INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        observed_at REAL NOT NULL,
        down_since REAL,
        PRIMARY KEY (node_id, container_id)
    );
    CREATE INDEX containers_by_app ON containers(app, slot);
    CREATE TABLE sync_errors (
        path TEXT PRIMARY KEY,
        commit_sha TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        app TEXT,
        node_id TEXT,
        task_id INTEGER,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_app ON events(app, id);
    """,
    # 2: rollouts. A slot runs the revision its placement names (the app's stable
    # revision when none); the rollout controller moves slots between revisions.
    """
    ALTER TABLE apps ADD COLUMN target_revision INTEGER;
    UPDATE apps SET target_revision = current_revision;
    ALTER TABLE placements ADD COLUMN revision INTEGER;
    ALTER TABLE revisions ADD COLUMN runtime_hash TEXT;
    ALTER TABLE revisions ADD COLUMN image_digest TEXT;
    ALTER TABLE revisions ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;
    UPDATE revisions SET status = 'stable' WHERE status = 'active';
    UPDATE revisions SET status = 'replaced' WHERE status = 'superseded';
    ALTER TABLE containers ADD COLUMN started_at REAL;
    ALTER TABLE containers ADD COLUMN health_log TEXT;
    ALTER TABLE containers ADD COLUMN logs TEXT;
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        from_revision INTEGER NOT NULL,
        status TEXT NOT NULL,
        canary_slot INTEGER,
        canary_node TEXT,
        saved TEXT NOT NULL DEFAULT '{}',
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL,
        phase_started_at REAL NOT NULL,
        deadline REAL,
        progress_deadline REAL NOT NULL,
        reason TEXT,
        failed_phase TEXT,
        evidence TEXT NOT NULL DEFAULT '{}',
        recorded INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX rollouts_by_app ON rollouts(app, id);
    CREATE UNIQUE INDEX one_live_rollout_per_app ON rollouts(app)
        WHERE status IN ('pending', 'canary', 'verifying', 'promoting', 'rolling_back');
    """,
    # 3: API tokens (users'), stored only as SHA-256; the secret is shown once, at creation.
    """
    CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL
    );
    """,
    # 4: a container's tasks, newest last: the scheduler's "latest task per container"
    # and pruning read them by this, not by scanning every task.
    """
    CREATE INDEX tasks_by_container ON tasks(node_id, container, id);
    """,
    # 5: a container's evidence that outlives a sample (see ObservedContainer), and the
    # start and restart count its current run began with: what the health gate compares.
    """
    ALTER TABLE containers ADD COLUMN finished_at REAL;
    ALTER TABLE containers ADD COLUMN last_exit_code INTEGER;
    ALTER TABLE containers ADD COLUMN last_run REAL;
    ALTER TABLE containers ADD COLUMN inspected_at REAL;
    ALTER TABLE containers ADD COLUMN first_started_at REAL;
    ALTER TABLE containers ADD COLUMN first_restarts INTEGER;
    """,
    # 6: secret values (store/secret_values.py): a row per version, sealed (never a
    # value), and which revision refers to which version. IF NOT EXISTS: a database of
    # a 0.5 pre-release made them outside the migrations, at the secrets service's start.
    """
    CREATE TABLE IF NOT EXISTS secret_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE IF NOT EXISTS secret_uses (
        app TEXT NOT NULL,
        number INTEGER NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (app, number, name, version),
        FOREIGN KEY (app, number) REFERENCES revisions(app, number) ON DELETE CASCADE
    );
    CREATE INDEX IF NOT EXISTS secret_uses_by_name ON secret_uses(name, version);
    """,
    # 7: dashboard sign-ins, kept as the hash of the cookie's id; a session names its token
    # by the token's hash, so revoking the token deletes its sessions (ON DELETE CASCADE).
    """
    CREATE TABLE ui_sessions (
        id_hash TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL REFERENCES api_tokens(token_hash) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX ui_sessions_by_token ON ui_sessions(token_hash, created_at);
    """,
]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


SLOW_WRITE = 0.020  # seconds: a write transaction longer than this is kept in `slow_writes`
SLOW_WRITES_KEPT = 50


class Store:
    """The CP's database: `write()` for transactions, `query()`/`one()` for reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(path)
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self.longest_write = 0.0
        # Moves on with every committed transaction that changed a row: what was read
        # at one version is still true while it holds (see Views.apps in service/views.py).
        self.version = 0
        # The newest slow writes, (when, seconds, where): what a benchmark or operator
        # looks at when the longest write is too long (GET /api/version's metrics).
        self.slow_writes: deque[tuple[float, float, str]] = deque(maxlen=SLOW_WRITES_KEPT)
        # Called after each committed transaction, outside the writer lock, with its site and
        # seconds (GET /metrics' histogram): what the CP measures here anyway, shown.
        self.observers: list[Callable[[str, float], None]] = []
        self._migrate()

    def _migrate(self) -> None:
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            current = done.fetchone()[0]
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                log.info("database %s: migrated to schema version %d", self.path, version)

    @contextmanager
    def write(self, site: str = "", *, quiet: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; commits on success, rolls back on any error.

        `site` names it in `slow_writes` (default: the function with the `with`).
        A transaction that changes rows moves `version` on, unless `quiet`: it
        writes only what readers already have from memory (heartbeat times).
        """
        with self._write_lock:
            started = time.perf_counter()
            changes = self._writer.total_changes
            # Under @contextmanager, two frames up is the function with the `with`.
            site = site or sys._getframe(2).f_code.co_qualname
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")
            if not quiet and self._writer.total_changes != changes:
                self.version += 1
            # Benchmarks read this: the writer lock is what every other write waits on.
            took = time.perf_counter() - started
            self.longest_write = max(self.longest_write, took)
            if took > SLOW_WRITE:
                self.slow_writes.append((time.time(), took, site))
        for observe in self.observers:
            try:
                observe(site, took)
            except Exception:  # the transaction is committed: a figure must not fail it
                log.exception("database: a write observer failed")

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL: it never waits for the writer)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
        return conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.reader().execute(sql, params)]

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        row = self.reader().execute(sql, params).fetchone()
        return dict(row) if row else None

    def close(self) -> None:
        with self._write_lock:  # never under a transaction running on another thread
            self._writer.close()


def among(column: str, values: Sequence[str] | None) -> tuple[str, list[str]]:
    """A WHERE condition limiting `column` to `values` (None: no limit), and its parameters.

    Callers pass at most a chunk of values (scheduler.CHUNK_APPS), far below
    SQLite's limit on parameters.
    """
    if values is None:
        return "1", []
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


@contextmanager
def savepoint(db: sqlite3.Connection) -> Iterator[None]:
    """A nested transaction: what fails inside is undone, the enclosing one goes on."""
    db.execute("SAVEPOINT item")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK TO item")
        db.execute("RELEASE item")
        raise
    db.execute("RELEASE item")


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
