"""What a hostile push, heartbeat or request once did to the control plane, and no longer does.

Each test here reproduces a defect found by using Docklet (issue "Shape and
soundness before growth"): one bad input used to stop every controller pass,
answer 500, or cost minutes; now it is reported and the rest goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import ADMIN_TOKEN, WSGIClient

from docklet.common import defaults
from docklet.cp.controller import Controller
from docklet.cp.desired.specfile import parse
from docklet.cp.service.controlplane import ControlPlane
from docklet.wire.client import Client
from docklet.wire.protocol import Heartbeat, Registration

ALICE = "Alice <alice@example.com>"


def git(repo: Path, *args: str, **kw: Any) -> str:
    env = {
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@x",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@x",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, check=True, **kw)
    return done.stdout.decode()


def push(cp: ControlPlane, work: Path, files: dict[bytes, bytes], *config: str) -> None:
    """Commit `files` (raw names, raw bytes) with the real git CLI and push to the CP's repo.

    The pre-receive hook would refuse these (tests/test_hooks.py): it is taken
    away here, to test the sync's own defences against what reaches the
    repository some other way (written by hand, or before the hook existed).
    """
    (cp.config.repo_path / "hooks" / "pre-receive").unlink(missing_ok=True)
    if not (work / ".git").exists():
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "cp", str(cp.config.repo_path))
        if cp.repo.head():
            git(work, "fetch", "-q", "cp", "main")
            git(work, "reset", "-q", "--hard", "cp/main")
    for name, data in files.items():
        path = work / os.fsdecode(name)  # surrogateescape: the raw bytes reach the disk
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git(work, "add", "-A")
    git(work, *config, "commit", "-q", "-m", "push")
    git(work, "push", "-q", "cp", "main")


def app_names(cp: ControlPlane) -> set[str]:
    return {a["name"] for a in cp.views.apps()}


def create(api: WSGIClient, name: str) -> tuple[int, Any]:
    return api.post("/api/apps", {"name": name, "image": "nginx:1.25"})


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_goes_on(
    cp: ControlPlane, api: WSGIClient, tmp_path: Path
) -> None:
    push(cp, tmp_path / "w", {b"apps/caf\xe9.yaml": b"name: cafe\nimage: x\n"})
    cp.passes.sync()
    assert cp.passes.reconcile() == 0
    errors = cp.views.sync_state()["errors"]
    assert errors == [
        {
            "path": "apps/caf\\xe9.yaml",
            "message": "apps/caf\\xe9.yaml: ignored: the file name is not UTF-8; rename it",
        }
    ]
    # Writes still commit, sync and answer (they answered 500 before).
    status, answer = create(api, "web")
    assert status == 201, answer
    assert "web" in app_names(cp)


def test_a_commit_with_an_unknown_encoding_syncs(cp: ControlPlane, tmp_path: Path) -> None:
    push(
        cp,
        tmp_path / "w",
        {b"apps/web.yaml": b"name: web\nimage: nginx:1.25\n"},
        "-c",
        "i18n.commitEncoding=bogus-enc",
    )
    result = cp.passes.sync()
    assert result is not None and result.new_revisions == {"web": 1}


def test_symlinks_subdirectories_and_big_files_are_reported_not_read(
    cp: ControlPlane, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    push(cp, work, {b"apps/web.yaml": b"name: web\nimage: nginx:1.25\n"})
    (work / "apps" / "link.yaml").symlink_to("/etc/passwd")
    big = b"name: big\nimage: nginx\nlabels: {a: '" + b"x" * defaults.MAX_SPEC_BYTES + b"'}\n"
    push(cp, work, {b"apps/sub/x.yaml": b"name: x\nimage: x\n", b"apps/big.yaml": big})
    cp.passes.sync()
    errors = {e["path"]: e["message"] for e in cp.views.sync_state()["errors"]}
    assert errors == {
        "apps/big.yaml": "apps/big.yaml: 256.1 KiB is over the 256 KiB limit for a spec file",
        "apps/link.yaml": "apps/link.yaml: refused: a symbolic link; commit the spec itself",
        "apps/sub": "apps/sub: ignored: specs are read from apps/ itself, not its subdirectories",
    }
    assert app_names(cp) == {"web"}


def test_alias_amplification_is_a_sync_error_not_a_gigabyte(
    cp: ControlPlane, tmp_path: Path
) -> None:
    long = "x" * 60_000
    aliases = ", ".join(["*s"] * 40)
    bomb = f"name: amp\nimage: nginx\nlabels: {{big: &s '{long}'}}\ncommand: [{aliases}]\n"
    push(cp, tmp_path / "w", {b"apps/amp.yaml": bomb.encode()})
    cp.passes.sync()
    (error,) = cp.views.sync_state()["errors"]
    assert "expands to more than 1 MiB" in error["message"]
    assert app_names(cp) == set()


def test_an_unchanged_file_is_not_parsed_again(
    cp: ControlPlane, tmp_path: Path, monkeypatch: Any
) -> None:
    from docklet.cp.desired import specfile, sync

    sync._parsed.clear()  # the cache is per process: another test may have parsed these bytes
    work = tmp_path / "w"
    push(cp, work, {b"apps/web.yaml": b"name: web\nimage: nginx:1.25\n"})
    cp.passes.sync()
    parsed: list[str] = []
    load = specfile.load
    monkeypatch.setattr(
        sync.specfile, "load", lambda data, source: parsed.append(source) or load(data, source)
    )
    push(cp, work, {b"apps/api.yaml": b"name: api\nimage: api:1\n"})
    cp.passes.sync()
    assert parsed == ["apps/api.yaml"]


def test_concurrent_creates_each_see_their_own_app(served_cp: str) -> None:
    """Read-your-writes: a create answers only once its own commit is synced."""
    results: dict[str, tuple[int, str]] = {}

    def run(n: int) -> None:
        request = urllib.request.Request(
            f"{served_cp}/api/apps",
            data=json.dumps({"name": f"cc-{n}", "image": "nginx:1.25"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                results[f"cc-{n}"] = (resp.status, "")
            # The CLI's wait that follows reads the app at once.
            Client(served_cp, token=ADMIN_TOKEN).get(f"/api/apps/cc-{n}")
        except urllib.error.HTTPError as exc:
            results[f"cc-{n}"] = (exc.code, exc.read().decode())

    threads = [threading.Thread(target=run, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {f"cc-{n}": (201, "") for n in range(16)}


def test_duplicate_files_are_all_removed_and_other_edits_refused(
    cp: ControlPlane, api: WSGIClient, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    push(
        cp,
        work,
        {
            b"apps/dup.yaml": b"name: dup\nimage: nginx:1\n",
            b"apps/dup.yml": b"name: dup\nimage: nginx:2\n",
        },
    )
    cp.passes.sync()
    status, answer = api.post("/api/apps/dup/stop")
    assert status == 409
    assert "apps/dup.yaml and apps/dup.yml" in answer["error"]["message"]
    status, _ = api.delete("/api/apps/dup")
    assert status == 200
    files = cp.repo.read(cp.repo.head()).files
    assert [p for p in files if "dup" in p] == []


def test_an_update_commits_env_values_exactly_and_keeps_them_out_of_the_message(
    cp: ControlPlane, api: WSGIClient
) -> None:
    create(api, "web")
    tricky = "a\x85b\u2028c 1.10 012 yes"
    status, answer = api.post("/api/apps/web/update", {"env": {"SECRET": tricky}})
    assert status == 200, answer
    commit = cp.repo.read(cp.repo.head())
    assert parse(commit.files["apps/web.yaml"])["env"] == {"SECRET": tricky}
    assert tricky not in commit.message and commit.message == (
        "Update app web: env\n\nDocklet-Token: test-admin"
    )


def test_an_infinite_number_in_a_registration_is_refused(api: WSGIClient) -> None:
    status, answer = api.post(
        "/api/agents/register",
        raw=b'{"engine_id": "e1", "name": "n1", "info": {"x": 1e400}}',
    )
    assert status == 400 and "too large a number" in answer["error"]["message"]
    status, nodes = api.get("/api/state/nodes")
    assert status == 200 and nodes == []


def test_a_heartbeat_over_the_container_limit_is_refused(api: WSGIClient) -> None:
    status, reg = api.post("/api/agents/register", {"engine_id": "e1", "name": "n1"})
    containers = [
        {"id": f"c{i}", "name": f"docklet.x.{i}", "state": "running", "labels": {}}
        for i in range(5001)
    ]
    status, answer = api.post(
        f"/api/agents/{reg['node_id']}/heartbeat",
        {"containers": containers},
        headers={"Authorization": f"Bearer {reg['token']}"},
    )
    assert status == 413 and "at most 5000 containers" in answer["error"]["message"]


def test_thousands_of_orphans_cost_a_pass_a_constant_number_of_queries(
    cp: ControlPlane,
) -> None:
    node = cp.agents.register(
        Registration(engine_id="e1", name="n1"), join_token=cp.tokens.join_token()
    )["node_id"]

    def beat(n: int) -> None:
        containers = [
            {
                "id": f"{i:064d}",
                "name": f"docklet.ghost.{i}",
                "state": "running",
                "labels": {"docklet.app": "ghost", "docklet.slot": str(i)},
            }
            for i in range(n)
        ]
        cp.agents.heartbeat(node, Heartbeat.model_validate({"containers": containers}))

    def selects_in_a_pass() -> int:
        statements: list[str] = []
        cp.store._writer.set_trace_callback(statements.append)
        try:
            cp.passes.reconcile()
        finally:
            cp.store._writer.set_trace_callback(None)
        return sum(1 for s in statements if s.lstrip().upper().startswith("SELECT"))

    beat(10)
    few = selects_in_a_pass()
    beat(3000)
    many = selects_in_a_pass()
    assert many == few  # not one query per container (it was: minutes per pass)
    assert len(cp.store.query("SELECT id FROM tasks WHERE app = 'ghost'")) == 3000
    assert cp.passes.reconcile() == 0  # queued once, never twice


def test_one_app_that_cannot_be_scheduled_does_not_stop_the_others(
    cp: ControlPlane, api: WSGIClient
) -> None:
    cp.agents.register(Registration(engine_id="e1", name="n1"), join_token=cp.tokens.join_token())
    create(api, "bad")
    with cp.store.write() as db:  # a revision this CP cannot read (a bug, a bad migration)
        db.execute("UPDATE revisions SET spec = '{\"oops\": 1}' WHERE app = 'bad'")
    from docklet.cp.reconcile import world

    world._specs.clear()
    status, _ = create(api, "good")
    assert status == 201
    cp.passes.reconcile()  # a pass over every app, as the controller makes
    tasks = {t["app"] for t in cp.store.query("SELECT app FROM tasks")}
    assert "good" in tasks
    (bad,) = [a for a in cp.views.apps() if a["name"] == "bad"]
    assert "internal error" in bad["last_error"]


def test_a_failing_sync_does_not_stop_the_reconcile(cp: ControlPlane, monkeypatch: Any) -> None:
    node = cp.agents.register(
        Registration(engine_id="e1", name="n1"), join_token=cp.tokens.join_token()
    )["node_id"]
    with cp.store.write() as db:
        db.execute("UPDATE nodes SET last_seen = 0")
    cp.liveness.started_at = 0

    def broken() -> None:
        raise RuntimeError("the repository is unreadable")

    monkeypatch.setattr(cp.passes, "sync", broken)
    stop = threading.Event()
    Controller(cp).run(stop, max_iterations=1)
    assert cp.views.nodes()[0]["status"] == "offline"  # liveness still ran
    assert node


def test_a_cp_restart_gives_nodes_a_fresh_grace(cp: ControlPlane, config: Any) -> None:
    node = cp.agents.register(
        Registration(engine_id="e1", name="n1"), join_token=cp.tokens.join_token()
    )["node_id"]
    with cp.store.write() as db:  # the CP was down for five minutes
        db.execute("UPDATE nodes SET last_seen = ?", (time.time() - 300,))
    restarted = ControlPlane(config)
    try:
        restarted.passes.reconcile()
        assert restarted.views.nodes()[0]["status"] == "online"
        kinds = [e["kind"] for e in restarted.views.events(None, 50)]
        assert "node_offline" not in kinds and "node_unknown" not in kinds
        # Heartbeats it has itself missed still count.
        restarted.liveness.started_at -= config.offline_seconds + 1
        restarted.passes.reconcile()
        assert restarted.views.nodes()[0] == {
            **restarted.views.nodes()[0],
            "node_id": node,
            "status": "offline",
        }
    finally:
        restarted.store.close()


def test_a_body_over_the_limit_is_refused_by_the_server(served_cp: str) -> None:
    big = b'{"image": "' + b"x" * (defaults.MAX_BODY + 10) + b'"}'
    request = urllib.request.Request(f"{served_cp}/api/apps", data=big, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a 4 MiB+ body was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
    except (ConnectionError, urllib.error.URLError):
        pass  # waitress may close the connection while the client still sends: refused too
    assert Client(served_cp, token=ADMIN_TOKEN).get("/api/health") == {"status": "ok"}


def test_a_spec_read_before_is_still_refused_as_a_symlink_or_under_another_suffix(
    cp: ControlPlane, tmp_path: Path
) -> None:
    """Spec bytes are kept by blob id once read; the same blob must still pass every check."""
    work = tmp_path / "w"
    text = b"name: web\nimage: nginx:1.25\n"
    push(cp, work, {b"apps/web.yaml": text})
    cp.passes.sync()  # read: its blob is kept now
    (work / "apps" / "link.yaml").symlink_to(text.decode())  # a link whose target is that text
    push(cp, work, {b"apps/web.txt": text})  # the same blob under another suffix
    cp.passes.sync()
    errors = {e["path"]: e["message"] for e in cp.views.sync_state()["errors"]}
    assert errors == {
        "apps/link.yaml": "apps/link.yaml: refused: a symbolic link; commit the spec itself",
        "apps/web.txt": "apps/web.txt: ignored: spec files end in .yaml or .yml",
    }
    assert app_names(cp) == {"web"}
