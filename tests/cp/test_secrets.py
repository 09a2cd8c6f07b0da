"""Secrets: the API and the store, on a real control plane (SQLite file, Git repo, WSGI).

What a user would notice: a value set is never shown back, never stored in plain text,
reaches only the lease of the task that uses it; a new value rolls out as a new revision;
a missing secret is a spec error with its line; a wrong key says so.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import WSGIClient

from docklet.agent.container import create_options, secret_archive
from docklet.cli.main import cli
from docklet.common import defaults, logs
from docklet.common.errors import TaskFailed
from docklet.cp.server import main as cp_main
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.store.db import MIGRATIONS
from docklet.wire.protocol import ContainerSpec, LeasedTask


def canary() -> str:
    return f"CANARY-SECRET-{uuid.uuid4().hex}"


def put(api: WSGIClient, name: str, value: Any) -> tuple[int, Any]:
    return api.request("PUT", f"/api/secrets/{name}", {"value": value})


def app_with_secret(api: WSGIClient, name: str = "web", secret: str = "db-password") -> Any:
    status, body = api.post(
        "/api/apps",
        {
            "name": name,
            "image": "nginx:1.25",
            "env": {"PLAIN": "x", "DB_PASSWORD": {"secret": secret}},
            "secrets": [{"name": secret}],
        },
    )
    assert status == 201, body
    return body


def every_byte(cp: ControlPlane) -> bytes:
    """The database's bytes, its WAL included: what a copy of the data dir would hold."""
    files = [cp.config.db_path, Path(f"{cp.config.db_path}-wal")]
    return b"".join(p.read_bytes() for p in files if p.exists())


def lease(api: WSGIClient, cp: ControlPlane) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A node joins, a pass places work on it, and its agent polls: the tasks it gets."""
    status, node = api.post("/api/agents/register", {"engine_id": uuid.uuid4().hex, "name": "n1"})
    assert status == 200, node
    cp.passes.reconcile()
    auth = {"Authorization": f"Bearer {node['token']}"}
    status, answer = api.get(f"/api/agents/{node['node_id']}/tasks", headers=auth)
    assert status == 200, answer
    return node, answer["tasks"]


# -- set, list, rm ----------------------------------------------------------------------


def test_set_list_and_rm_never_show_the_value(api: WSGIClient) -> None:
    value = canary()
    assert put(api, "db-password", value) == (
        200,
        {"name": "db-password", "version": 1, "apps": []},
    )
    assert put(api, "db-password", value + "2")[1]["version"] == 2
    status, listed = api.get("/api/secrets")
    assert status == 200
    assert [(s["name"], s["version"], s["versions"], s["apps"]) for s in listed] == [
        ("db-password", 2, [1, 2], [])
    ]
    assert value not in json.dumps(listed)
    assert api.delete("/api/secrets/db-password") == (
        200,
        {"name": "db-password", "removed": True},
    )
    assert api.get("/api/secrets") == (200, [])
    status, gone = api.delete("/api/secrets/db-password")
    assert status == 404 and gone["error"]["code"] == "not_found"


def test_a_read_token_lists_but_cannot_set_or_remove(api: WSGIClient, cp: ControlPlane) -> None:
    read = cp.tokens.create("reader", "read", "test")
    headers = {"Authorization": f"Bearer {read}"}
    assert api.get("/api/secrets", headers=headers)[0] == 200
    status, body = api.request("PUT", "/api/secrets/x1", {"value": "v"}, headers=headers)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert api.request("DELETE", "/api/secrets/x1", headers=headers)[0] == 403


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("Upper", {"value": "v"}, 400),
        ("-dash", {"value": "v"}, 400),
        ("a" * 64, {"value": "v"}, 400),
        ("ok", {"value": 12}, 400),
        ("ok", {}, 400),
        ("ok", {"value": "a\x00b"}, 400),
        ("ok", {"value": "x" * (defaults.SECRET_VALUE_MAX + 1)}, 413),
        ("ok", {"value": "é" * (defaults.SECRET_VALUE_MAX // 2 + 1)}, 413),  # bytes, not chars
    ],
)
def test_bad_names_and_values_are_refused_clearly(
    api: WSGIClient, name: str, body: Any, status: int
) -> None:
    got, answer = api.request("PUT", f"/api/secrets/{name}", body)
    assert got == status, answer
    assert set(answer["error"]) == {"code", "message", "status"}
    assert api.get("/api/secrets") == (200, [])


def test_the_largest_value_and_name_are_taken(api: WSGIClient) -> None:
    name = "a" + "b.c_d-" * 10 + "ef"
    assert len(name) == 63
    assert put(api, name, "x" * defaults.SECRET_VALUE_MAX)[0] == 200


def test_a_secret_in_use_is_not_removed_and_the_apps_are_named(api: WSGIClient) -> None:
    put(api, "db-password", canary())
    app_with_secret(api, "web")
    app_with_secret(api, "worker")
    status, body = api.delete("/api/secrets/db-password")
    assert status == 409
    assert "web, worker" in body["error"]["message"]
    assert api.get("/api/secrets")[1][0]["apps"] == ["web", "worker"]
    api.delete("/api/apps/web")
    api.delete("/api/apps/worker")
    assert api.delete("/api/secrets/db-password")[0] == 200


# -- at rest --------------------------------------------------------------------------


def test_values_are_encrypted_at_rest_under_a_0600_key(api: WSGIClient, cp: ControlPlane) -> None:
    value = canary()
    put(api, "db-password", value)
    put(api, "db-password", value)  # the same value twice: another nonce, other bytes
    app_with_secret(api)
    assert value.encode() not in every_byte(cp)
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    rows = cp.store.query("SELECT nonce, ciphertext FROM secret_versions ORDER BY version")
    assert len({bytes(r["nonce"]) for r in rows}) == 2 and all(len(r["nonce"]) == 12 for r in rows)
    assert rows[0]["ciphertext"] != rows[1]["ciphertext"]


def test_a_ciphertext_moved_to_another_version_does_not_open(
    api: WSGIClient, cp: ControlPlane
) -> None:
    put(api, "a1", "first-value")
    put(api, "a1", "second-value")
    with cp.store.write() as db:  # the name and version are sealed with the value
        db.execute(
            "UPDATE secret_versions SET nonce = (SELECT nonce FROM secret_versions WHERE"
            " version = 1), ciphertext = (SELECT ciphertext FROM secret_versions WHERE"
            " version = 1) WHERE version = 2"
        )
    with pytest.raises(Exception, match="does not open with this key"):
        cp.secrets.values([("a1", 2)])
    assert cp.secrets.values([("a1", 1)])[0]["value"] == "first-value"


def test_a_wrong_key_fails_clearly(api: WSGIClient, cp: ControlPlane) -> None:
    put(api, "db-password", canary())
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    key_file.unlink()
    status, body = put(api, "db-password", "new")  # no key, values stored: not a new key
    assert status == 500 and body["error"]["code"] == "secret_key"
    assert "missing" in body["error"]["message"]
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    key_file.chmod(0o600)
    status, body = put(api, "db-password", "new")
    assert status == 500 and body["error"]["code"] == "secret_key"
    assert "not the one the stored secrets were sealed with" in body["error"]["message"]


def test_the_key_can_come_from_the_environment(
    api: WSGIClient, cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(defaults.SECRET_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    put(api, "db-password", "from-env-key")
    assert not (cp.config.data_dir / defaults.SECRET_KEY_FILE).exists()
    assert cp.secrets.values([("db-password", 1)])[0]["value"] == "from-env-key"
    monkeypatch.setenv(defaults.SECRET_KEY_ENV, "not base64!")
    status, body = put(api, "db-password", "x")
    assert status == 500 and defaults.SECRET_KEY_ENV in body["error"]["message"]


def test_rotate_key_re_encrypts_every_version_and_swaps_the_file(
    api: WSGIClient, cp: ControlPlane
) -> None:
    values = [canary(), canary(), canary()]
    for value in values:
        put(api, "db-password", value)
    put(api, "api-key", "other-value")
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    old_key, old_rows = key_file.read_text(), cp.store.query("SELECT * FROM secret_versions")
    result = CliRunner().invoke(
        cp_main, ["secrets", "rotate-key", "--data-dir", str(cp.config.data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "4 secret version(s) re-encrypted" in result.output
    assert key_file.read_text() != old_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not key_file.with_name("secret.key.new").exists()
    new_rows = cp.store.query("SELECT * FROM secret_versions")
    assert {bytes(r["ciphertext"]) for r in new_rows}.isdisjoint(
        bytes(r["ciphertext"]) for r in old_rows
    )
    # The running CP reads the new file: every version still opens.
    opened = cp.secrets.values([("db-password", 1), ("db-password", 2), ("db-password", 3)])
    assert [v["value"] for v in opened] == values
    key_file.write_text(old_key)  # the old key opens nothing any more
    with pytest.raises(Exception, match="not the one the stored secrets were sealed with"):
        cp.secrets.values([("api-key", 1)])


def test_an_interrupted_rotation_is_finished_at_next_use(api: WSGIClient, cp: ControlPlane) -> None:
    from docklet.cp.service import secrets as service

    put(api, "db-password", "before-rotation")
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    replace = os.replace
    try:  # the rename never happens: as if the process died after its commit
        os.replace = lambda *a: None  # type: ignore[assignment]
        service.rotate_key(cp.store, CPConfig(data_dir=cp.config.data_dir))
    finally:
        os.replace = replace
    assert key_file.with_name("secret.key.new").exists()
    assert cp.secrets.values([("db-password", 1)])[0]["value"] == "before-rotation"
    assert not key_file.with_name("secret.key.new").exists()


def test_old_versions_are_pruned_but_those_revisions_use(api: WSGIClient, cp: ControlPlane) -> None:
    put(api, "db-password", "v1-value")
    app_with_secret(api)  # its revision uses v1
    for i in range(2, 13):
        put(api, "db-password", f"value-{i}")
    kept = api.get("/api/secrets")[1][0]["versions"]
    # The newest 10, and every version a revision (one per value set) refers to.
    assert kept == list(range(1, 13))
    api.delete("/api/apps/web")
    cp.passes.reconcile()
    put(api, "db-password", "value-13")
    assert api.get("/api/secrets")[1][0]["versions"] == list(range(4, 14))


# -- specs and revisions ------------------------------------------------------------------


def test_a_spec_naming_a_missing_secret_is_an_error_with_its_line_until_it_exists(
    api: WSGIClient, cp: ControlPlane
) -> None:
    status, body = api.post(
        "/api/apps", {"name": "web", "image": "nginx:1.25", "env": {"P": {"secret": "nope"}}}
    )
    assert status == 400 and body["error"]["code"] == "invalid_spec"  # nothing committed
    assert (
        "env.P: secret 'nope' does not exist: docklet secret set nope" in body["error"]["message"]
    )
    # A push (here a commit by path) is taken, as Git is the truth; the sync says what is wrong.
    text = b"name: web\nimage: nginx:1.25\nenv:\n  A: b\n  P: {secret: nope}\n"
    cp.repo.commit(lambda files: {"apps/web.yaml": text}, "Add web", "alice <a@example.com>")
    cp.passes.sync()
    status, sync = api.get("/api/state/sync")
    (error,) = sync["errors"]
    assert error["path"] == "apps/web.yaml"
    assert "apps/web.yaml:5: env.P: secret 'nope' does not exist" in error["message"]
    assert "docklet secret set nope" in error["message"]
    assert api.get("/api/apps/web")[0] == 404  # no revision: nothing to run
    put(api, "nope", "now-it-exists")  # no commit needed: the app syncs by itself
    assert api.get("/api/state/sync")[1]["errors"] == []
    status, app = api.get("/api/apps/web")
    assert status == 200 and app["target_revision"] == "v1"


def test_a_new_value_is_a_new_revision_that_records_the_version(
    api: WSGIClient, cp: ControlPlane
) -> None:
    first, second = canary(), canary()
    put(api, "db-password", first)
    app_with_secret(api)
    assert put(api, "db-password", second) == (
        200,
        {"name": "db-password", "version": 2, "apps": ["web"]},
    )
    _, revs = api.get("/api/apps/web/revisions")
    assert [r["revision"] for r in revs][:2] in (["v2", "v1"], ["v1", "v2"])
    by_number = {r["number"]: r["spec"] for r in revs}
    assert by_number[1]["env"]["DB_PASSWORD"] == {"secret": "db-password", "version": 1}
    assert by_number[2]["env"]["DB_PASSWORD"] == {"secret": "db-password", "version": 2}
    assert by_number[2]["secrets"][0]["version"] == 2
    # Another secret's new value, or the same value's name unused: nothing new.
    put(api, "unused", "zzzzzz")
    assert len(api.get("/api/apps/web/revisions")[1]) == 2
    seen = json.dumps([revs, api.get("/api/apps/web")[1], api.get("/api/state/apps")[1]])
    assert first not in seen and second not in seen


def test_rollback_returns_the_old_version_pinned_in_git(api: WSGIClient, cp: ControlPlane) -> None:
    put(api, "db-password", "old-value")
    app_with_secret(api)
    with cp.store.write() as db:  # v1 ran: it is what a rollback goes back to
        db.execute("UPDATE revisions SET status = 'stable' WHERE number = 1")
    put(api, "db-password", "new-value")
    status, body = api.post("/api/apps/web/rollback", {"to": "v1"})
    assert status == 200, body
    revs = {r["number"]: r["spec"] for r in api.get("/api/apps/web/revisions")[1]}
    assert revs[3]["env"]["DB_PASSWORD"] == {"secret": "db-password", "version": 1}
    git = ["git", "--git-dir", str(cp.config.repo_path), "show", "main:apps/web.yaml"]
    written = subprocess.run(git, capture_output=True, text=True, check=True).stdout
    assert "version: 1" in written and "old-value" not in written
    put(api, "db-password", "newest-value")  # pinned: a new value does not move it
    assert len(api.get("/api/apps/web/revisions")[1]) == 3


def test_only_the_lease_of_the_task_that_uses_them_carries_the_values(
    api: WSGIClient, cp: ControlPlane
) -> None:
    value = canary()
    put(api, "db-password", value)
    app_with_secret(api)
    api.post("/api/apps", {"name": "plain", "image": "nginx:1.25"})
    _, tasks = lease(api, cp)
    by_app = {t["app"]: t for t in tasks}
    assert by_app["web"]["secret_values"] == [{"name": "db-password", "version": 1, "value": value}]
    assert "secret_values" not in by_app["plain"]
    assert by_app["web"]["payload"]["env"]["DB_PASSWORD"] == {
        "secret": "db-password",
        "version": 1,
    }
    task = LeasedTask.model_validate(by_app["web"])
    assert value not in repr(task)  # a task in a traceback shows no value
    stored = cp.store.query("SELECT payload FROM tasks")
    assert value not in json.dumps(stored)
    assert value.encode() not in every_byte(cp)


def test_a_task_error_that_echoes_a_value_is_scrubbed(api: WSGIClient, cp: ControlPlane) -> None:
    value = canary()
    put(api, "db-password", value)
    app_with_secret(api)
    node, tasks = lease(api, cp)
    (task,) = tasks
    report = {
        "status": "failed",
        "lease_token": task["lease_token"],
        "error": f"OCI runtime create failed: env DB_PASSWORD={value} refused",
    }
    auth = {"Authorization": f"Bearer {node['token']}"}
    status, _ = api.post(f"/api/agents/{node['node_id']}/tasks/{task['id']}", report, headers=auth)
    assert status == 200
    seen = json.dumps([api.get("/api/apps/web")[1], api.get("/api/events?limit=1000")[1]])
    assert "DB_PASSWORD=[secret db-password] refused" in seen
    assert value not in seen
    assert value.encode() not in every_byte(cp)


def test_a_value_that_cannot_be_opened_fails_its_task_and_not_the_others(
    api: WSGIClient, cp: ControlPlane
) -> None:
    put(api, "db-password", canary())
    app_with_secret(api)
    api.post("/api/apps", {"name": "plain", "image": "nginx:1.25"})
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    _, tasks = lease(api, cp)
    assert [t["app"] for t in tasks] == ["plain"]
    _, app = api.get("/api/apps/web")
    assert "its secrets cannot be delivered" in json.dumps(app)


def test_the_cp_log_never_shows_a_value_it_opened(
    api: WSGIClient, cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    value = canary()
    put(api, "db-password", value)
    cp.secrets.values([("db-password", 1)])
    assert logs.redact(f"oops {value} leaked") == "oops [redacted] leaked"


# -- the CLI ------------------------------------------------------------------------------


def docklet(url: str, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["--cp", url, *args], input=stdin)


def test_the_cli_sets_from_stdin_or_a_file_and_never_prints_values(
    served_cp: str, tmp_path: Path
) -> None:
    value = canary()
    made = docklet(served_cp, "secret", "set", "db-password", stdin=value)
    assert made.exit_code == 0, made.output
    assert "Secret db-password v1 set (used by no app yet)" in made.output
    path = tmp_path / "v.txt"
    path.write_text(value + "-file")
    assert (
        docklet(served_cp, "secret", "set", "db-password", "--from-file", str(path)).exit_code == 0
    )
    listed = docklet(served_cp, "secret", "list")
    assert listed.exit_code == 0 and "db-password   v2" in listed.output
    as_json = json.loads(docklet(served_cp, "secret", "list", "--json").output)
    assert as_json[0]["versions"] == [1, 2]
    assert docklet(served_cp, "secret", "rm", "db-password").exit_code == 0
    missing = docklet(served_cp, "secret", "rm", "db-password")
    assert missing.exit_code != 0 and "no secret 'db-password'" in missing.output
    for out in (made, listed):
        assert value not in out.output
    echoed = docklet(served_cp, "secret", "set", "with-newline", stdin="pw-value\n")
    assert echoed.exit_code == 0 and "ends with a line break, which is kept" in echoed.output


# -- the agent's side: create options as data -------------------------------------------


def test_the_agent_puts_values_in_the_env_and_files_of_the_container() -> None:
    spec = ContainerSpec.model_validate(
        {
            "image": "busybox:1",
            "container_hash": "abc",
            "env": {"PLAIN": "x", "DB": {"secret": "db", "version": 2}},
            "secrets": [{"name": "db", "version": 2, "target": "/run/secrets/db"}],
        }
    )
    values = {("db", 2): "s3cret-value"}
    options = create_options(spec, "c1", {}, values)
    assert options["environment"] == {"PLAIN": "x", "DB": "s3cret-value"}
    archive = secret_archive(spec, values)
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive or b"")) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode) == ("run/secrets/db", 0o400)
        assert tar.extractfile(member).read() == b"s3cret-value"  # type: ignore[union-attr]
    with pytest.raises(TaskFailed, match="secret db v2 did not come with the task"):
        create_options(spec, "c1", {}, {("db", 1): "old"})
    assert secret_archive(ContainerSpec(image="x", container_hash="h"), {}) is None


def test_a_cp_opening_a_value_while_a_rotation_renames_its_file_loses_nothing(
    api: WSGIClient, cp: ControlPlane
) -> None:
    from docklet.cp.service import secrets as service

    put(api, "db-password", "during-rotation")
    key_file = cp.config.data_dir / defaults.SECRET_KEY_FILE
    stale = key_file.with_name("secret.key.new")
    stale.write_text(base64.b64encode(os.urandom(32)).decode())  # no database matches it
    assert cp.secrets.values([("db-password", 1)])[0]["value"] == "during-rotation"
    assert stale.exists()  # never deleted by the CP: it may be a rotation's, in progress
    replace = os.replace

    def cp_reads_first(source: Any, target: Any) -> None:
        # The rotation has committed; the running CP opens a value before the rename
        # (and makes the rename itself, through the real os.replace).
        os.replace = replace  # type: ignore[assignment]
        assert cp.secrets.values([("db-password", 1)])[0]["value"] == "during-rotation"
        replace(source, target)

    try:
        os.replace = cp_reads_first  # type: ignore[assignment]
        assert service.rotate_key(cp.store, CPConfig(data_dir=cp.config.data_dir)) == 1
    finally:
        os.replace = replace
    assert not stale.exists()
    assert cp.secrets.values([("db-password", 1)])[0]["value"] == "during-rotation"


def test_a_new_value_does_not_repeat_the_commits_sync_errors(
    api: WSGIClient, cp: ControlPlane
) -> None:
    text = b"name: web\nimage: nginx:1.25\nreplicas: many\n"
    cp.repo.commit(lambda files: {"apps/web.yaml": text}, "Add web", "alice <a@example.com>")
    cp.passes.sync()
    put(api, "db-password", "one-value")
    put(api, "db-password", "two-value")
    status, found = api.get("/api/events?limit=1000")
    assert status == 200
    assert [e["kind"] for e in found].count("sync_error") == 1
    assert api.get("/api/state/sync")[1]["errors"][0]["path"] == "apps/web.yaml"


def test_rotating_before_any_secret_is_set_just_makes_a_key(cp: ControlPlane) -> None:
    result = CliRunner().invoke(
        cp_main, ["secrets", "rotate-key", "--data-dir", str(cp.config.data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "0 secret version(s) re-encrypted" in result.output
    assert (cp.config.data_dir / defaults.SECRET_KEY_FILE).exists()
    missing = CliRunner().invoke(cp_main, ["secrets", "rotate-key", "--data-dir", "/nonexistent"])
    assert missing.exit_code == 2 and "no control plane data in /nonexistent" in missing.output


# -- the tables, in the migrations ---------------------------------------------------------


def schema_versions(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
    finally:
        db.close()


def test_a_data_dir_of_0_3_upgrades_and_takes_secrets(config: CPConfig) -> None:
    # The database as 0.3 left it: its five migrations, applied as its Store applied them.
    config.data_dir.mkdir(parents=True)
    old = sqlite3.connect(config.db_path)
    old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, script in enumerate(MIGRATIONS[:5], start=1):
        old.executescript(script)
        old.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
    old.commit()
    old.close()
    plane = ControlPlane(config)
    try:
        assert schema_versions(config.db_path) == list(range(1, len(MIGRATIONS) + 1))
        assert plane.secrets.set("db-password", "upgraded", "ana")["version"] == 1
        text = b"name: web\nimage: nginx:1.25\nenv: {P: {secret: db-password}}\n"
        plane.repo.commit(lambda files: {"apps/web.yaml": text}, "Add web", "ana <a@x>")
        plane.passes.sync()
        (listed,) = plane.secrets.listing()
        assert (listed["name"], listed["versions"], listed["apps"]) == ("db-password", [1], ["web"])
    finally:
        plane.store.close()


def test_a_pre_release_database_with_the_tables_keeps_its_values(config: CPConfig) -> None:
    # A 0.5 pre-release made the tables at the secrets service's start, at schema version 5.
    plane = ControlPlane(config)
    plane.secrets.set("db-password", "kept-across", "ana")
    plane.store.close()
    db = sqlite3.connect(config.db_path)
    db.execute("DELETE FROM schema_migrations WHERE version > 5")
    db.execute("DROP TABLE ui_sessions")  # migration 7: no such pre-release had it
    db.commit()
    db.close()
    again = ControlPlane(config)
    try:
        assert schema_versions(config.db_path) == list(range(1, len(MIGRATIONS) + 1))
        (opened,) = again.secrets.values([("db-password", 1)])
        assert opened["value"] == "kept-across"
    finally:
        again.store.close()
