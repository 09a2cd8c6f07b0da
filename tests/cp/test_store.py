"""The CP's SQLite store: durable settings, migrations, transactions, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from docklet.cp.store.db import MIGRATIONS, Store, get_meta, set_meta


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "docklet.db")
    yield s
    s.close()


def add_app(db: sqlite3.Connection, name: str) -> None:
    db.execute(
        "INSERT INTO apps (name, desired, created_at, updated_at) VALUES (?, 'running', 0, 0)",
        (name,),
    )


def app_names(store: Store) -> set[str]:
    return {row["name"] for row in store.query("SELECT name FROM apps")}


def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
    return (
        conn.execute("PRAGMA journal_mode").fetchone()[0],
        conn.execute("PRAGMA foreign_keys").fetchone()[0],
        conn.execute("PRAGMA synchronous").fetchone()[0],
    )


def test_writer_is_wal_with_foreign_keys_and_full_sync(store: Store) -> None:
    with store.write() as db:
        assert pragmas(db) == ("wal", 1, 2)


def reader_pragmas(store: Store) -> tuple[object, ...]:
    return tuple(
        store.query(f"PRAGMA {name}")[0][name]
        for name in ("journal_mode", "foreign_keys", "synchronous")
    )


def test_readers_have_the_same_pragmas(store: Store) -> None:
    seen = [reader_pragmas(store)]
    reader = threading.Thread(target=lambda: seen.append(reader_pragmas(store)))
    reader.start()
    reader.join()
    assert seen == [("wal", 1, 2), ("wal", 1, 2)]


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:
        db.execute(
            "INSERT INTO revisions (app, number, spec, spec_hash, container_hash, commit_sha,"
            " author, message, status, created_at)"
            " VALUES ('ghost', 1, '{}', 'h', 'c', 'sha', 'a', 'm', 'active', 0)"
        )
    assert store.query("SELECT * FROM revisions") == []


def test_migration_is_recorded_once_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "docklet.db"
    for _ in range(3):
        s = Store(path)
        s.close()
    s = Store(path)
    try:
        versions = [r["version"] for r in s.query("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
    finally:
        s.close()


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "docklet.db"
    first = Store(path)
    with first.write() as db:
        add_app(db, "web")
        set_meta(db, "cluster_id", "abc123")
    first.close()
    second = Store(path)
    try:
        assert app_names(second) == {"web"}
        with second.write() as db:
            assert get_meta(db, "cluster_id") == "abc123"
    finally:
        second.close()


def test_write_that_raises_rolls_back_everything(store: Store) -> None:
    with store.write() as db:
        add_app(db, "kept")
    with pytest.raises(RuntimeError, match="boom"), store.write() as db:
        add_app(db, "web")
        set_meta(db, "synced_commit", "deadbeef")
        db.execute("UPDATE apps SET desired = 'stopped' WHERE name = 'kept'")
        raise RuntimeError("boom")
    assert app_names(store) == {"kept"}
    assert store.one("SELECT desired FROM apps WHERE name = 'kept'") == {"desired": "running"}
    with store.write() as db:
        assert get_meta(db, "synced_commit") is None


def test_failed_statement_rolls_back_and_the_store_keeps_working(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:
        add_app(db, "web")
        add_app(db, "web")  # duplicate primary key
    assert app_names(store) == set()
    with store.write() as db:
        add_app(db, "web")
    assert app_names(store) == {"web"}


def test_concurrent_writers_all_land(store: Store) -> None:
    start = threading.Barrier(2)

    def writer(prefix: str) -> None:
        start.wait()
        for i in range(50):
            with store.write() as db:
                add_app(db, f"{prefix}-{i}")

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert app_names(store) == {f"{p}-{i}" for p in ("a", "b") for i in range(50)}


def test_two_stores_on_one_file_both_write(tmp_path: Path) -> None:
    path = tmp_path / "docklet.db"
    one, two = Store(path), Store(path)
    try:

        def writer(store: Store, prefix: str) -> None:
            for i in range(30):
                with store.write() as db:
                    add_app(db, f"{prefix}-{i}")

        threads = [
            threading.Thread(target=writer, args=(one, "one")),
            threading.Thread(target=writer, args=(two, "two")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(app_names(one)) == 60
    finally:
        one.close()
        two.close()


def test_reader_in_another_thread_sees_each_commit(store: Store) -> None:
    seen: list[tuple[set[str], str | None]] = []
    asked, answered = threading.Event(), threading.Event()
    done = threading.Event()

    def reader() -> None:
        while True:
            asked.wait()
            asked.clear()
            if done.is_set():
                return
            latest = store.one("SELECT name FROM apps ORDER BY rowid DESC")
            seen.append((app_names(store), latest and latest["name"]))
            answered.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for name in ("web", "api"):
            with store.write() as db:
                add_app(db, name)
            asked.set()
            assert answered.wait(5)
            answered.clear()
    finally:
        done.set()
        asked.set()
        thread.join()
    assert seen == [({"web"}, "web"), ({"web", "api"}, "api")]


def test_reader_does_not_see_an_uncommitted_write(store: Store) -> None:
    seen: list[set[str]] = []
    with store.write() as db:
        add_app(db, "pending")
        reader = threading.Thread(target=lambda: seen.append(app_names(store)))
        reader.start()
        reader.join(5)
    assert seen == [set()]
    assert app_names(store) == {"pending"}


def test_one_returns_a_row_or_none(store: Store) -> None:
    with store.write() as db:
        add_app(db, "web")
    assert store.one("SELECT name, desired FROM apps WHERE name = ?", ("web",)) == {
        "name": "web",
        "desired": "running",
    }
    assert store.one("SELECT name FROM apps WHERE name = ?", ("nope",)) is None
