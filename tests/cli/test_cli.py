"""The CLI against a real CP over HTTP on loopback: output, exit codes, help."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import docklet.cli.main
import docklet.wire.client
from docklet.cli.main import ROLLOUT, ExitCode, cli, main
from docklet.common.errors import CPUnreachable
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store.nodes import register
from docklet.wire.client import NULL, mismatch
from docklet.wire.protocol import Registration


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--cp", url, *args])
    return result.exit_code, result.stdout, result.stderr


ROOT = Path(__file__).resolve().parents[2]  # this checkout, whichever venv runs the tests


@contextlib.contextmanager
def fake_cp(status: int, body: bytes) -> Iterator[str]:
    """A misbehaving server on loopback: every request gets `status` and `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docklet.cli.main, "POLL_INTERVAL", 0.01)


Script = dict[tuple[str, str], list[tuple[int, Any]]]


@contextlib.contextmanager
def scripted_cp(script: Script) -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """A fake CP on loopback: each (method, path) gives its (status, JSON) answers in
    turn, the last one for ever; any other request is a 404. Yields the URL and the
    requests received, as (method, path, JSON body or None)."""
    received: list[tuple[str, str, Any]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received.append((self.command, self.path, json.loads(raw) if raw else None))
                answers = script.get((self.command, self.path))
                if answers:
                    status, value = answers.pop(0) if len(answers) > 1 else answers[0]
                else:
                    status, value = 404, {"error": {"code": "not_found", "message": "no"}}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(value).encode())

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


TERMINAL = ("stable", "rolled_back", "rollback_failed", "superseded", "failed")


def rollout(status: str, **fields: Any) -> dict[str, Any]:
    """Rollout 7 of nginx, v2 → v3 over 3 replicas, as the API gives it."""
    now = time.time()
    return {
        "id": 7,
        "app": "nginx",
        "revision": "v3",
        "from_revision": "v2",
        "status": status,
        "terminal": status in TERMINAL,
        "canary_node": "node-1",
        "canary_slot": 1,
        "done": 0,
        "total": 3,
        "deadline": None,
        "progress_deadline": now + 300,
        "reason": None,
        "failed_phase": None,
        "evidence": {"error": None, "exit_code": None, "health": None, "logs": None},
        "created_at": now - 5,
        "updated_at": now,
        "finished_at": now if status in TERMINAL else None,
        **fields,
    }


def app_view(**fields: Any) -> dict[str, Any]:
    """The answer to update, rollback and retry: the app view, commit and rollout."""
    return {
        "name": "nginx",
        "revision": "v3",
        "running_revision": "v2",
        "status": "rolling_update",
        "desired": "running",
        "actual": "running",
        "replicas": 3,
        "running": 3,
        "nodes": ["node-1"],
        "errors": [],
        "last_error": None,
        "held": None,
        "commit": "0123456789abcdef",
        "rollout": rollout("canary"),
        **fields,
    }


ROLLOUT_PATH = "/api/apps/nginx/rollouts/7"


def update_script(*states: dict[str, Any], **answer: Any) -> Script:
    return {
        ("POST", "/api/apps/nginx/update"): [(200, app_view(**answer))],
        ("GET", ROLLOUT_PATH): [(200, state) for state in states],
    }


def docklet_process(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    """`python -m docklet` from this checkout, through main() as the installed command."""
    return subprocess.run(
        [sys.executable, "-m", "docklet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def add_node(cp: ControlPlane, name: str = "node-1") -> None:
    with cp.store.write() as db:
        register(db, Registration(engine_id=f"engine-{name}", name=name))


def test_version_shows_cli_and_control_plane(served_cp: str) -> None:
    code, out, _ = invoke(served_cp, "version")
    assert code == ExitCode.OK
    assert "docklet CLI" in out and "control plane" in out and "API v1" in out


def test_run_detach_prints_the_seed_lines_and_commits(served_cp: str, cp: ControlPlane) -> None:
    add_node(cp)
    code, out, err = invoke(served_cp, "run", "nginx", "--detach", "-p", "8080:80", "-e", "A=b")
    assert code == ExitCode.OK, err
    assert out == "✔ Creating deployment nginx\n✔ Task scheduled\n"
    files = cp.repo.read(cp.repo.head()).files
    text = files["apps/nginx.yaml"].decode()
    assert "image: nginx:latest" in text and "8080:80" in text and "A: b" in text


def test_ps_shows_desired_and_actual(served_cp: str, cp: ControlPlane) -> None:
    add_node(cp)
    invoke(served_cp, "run", "nginx", "--detach")
    code, out, _ = invoke(served_cp, "ps")
    assert code == ExitCode.OK
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "REVISION", "DESIRED", "ACTUAL", "NODE", "STATUS"]
    assert row.split()[:5] == ["nginx", "v1", "running", "pending", "node-1"]
    code, out, _ = invoke(served_cp, "ps", "--json")
    assert json.loads(out)[0]["desired"] == "running"


def test_nodes_lists_the_real_control_planes_nodes(served_cp: str, cp: ControlPlane) -> None:
    # The shapes the CLI checks answers against must match what the real API says.
    add_node(cp)
    code, out, err = invoke(served_cp, "nodes")
    assert code == ExitCode.OK, err
    assert out.splitlines()[1].split()[:2] == ["node-1", "online"]
    code, out, _ = invoke(served_cp, "nodes", "--json")
    assert code == ExitCode.OK and json.loads(out)[0]["node_id"] == "node-1"


def test_run_without_nodes_says_why_and_times_out(served_cp: str) -> None:
    code, _out, err = invoke(served_cp, "run", "nginx", "--timeout", "1")
    assert code == ExitCode.TIMEOUT
    assert "no online node" in err


def test_duplicate_name_is_a_client_error(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    code, _, err = invoke(served_cp, "run", "nginx:1.25", "--detach")
    assert code == ExitCode.CLIENT_ERROR
    assert err.startswith("✖ 409: app 'nginx' already exists")


def test_invalid_image_is_a_client_error(served_cp: str) -> None:
    code, _, err = invoke(served_cp, "run", "Not An Image", "--detach", "--name", "x")
    assert code == ExitCode.CLIENT_ERROR
    assert "image" in err and "Traceback" not in err


def test_unknown_app_is_a_client_error(served_cp: str) -> None:
    for command in ("stop", "rm", "start"):
        code, _, err = invoke(served_cp, command, "ghost")
        assert code == ExitCode.CLIENT_ERROR
        assert "app 'ghost' does not exist" in err


def test_unreachable_control_plane_is_one_line_and_its_own_code() -> None:
    code, _out, err = invoke("http://127.0.0.1:9", "ps")
    assert code == ExitCode.UNREACHABLE
    assert err.count("\n") == 1 and "cannot reach the control plane" in err


def test_server_error_has_its_own_code(served_cp: str, cp: ControlPlane) -> None:
    # A damaged database is the control plane's failure, not the user's.
    with sqlite3.connect(cp.config.db_path) as db:
        db.execute("DROP TABLE sync_errors")
    code, _, err = invoke(served_cp, "ps")
    assert code == ExitCode.SERVER_ERROR
    assert "500" in err and "Traceback" not in err


def test_bad_env_flag_is_a_usage_error(served_cp: str) -> None:
    code, _, err = invoke(served_cp, "run", "nginx", "-e", "NOEQUALS")
    assert code == ExitCode.USAGE
    assert "KEY=VALUE" in err


def test_stop_then_start_rewrites_the_spec(served_cp: str, cp: ControlPlane) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    assert invoke(served_cp, "stop", "nginx")[1] == "✔ Stopping nginx\n"
    assert b"state: stopped" in cp.repo.read(cp.repo.head()).files["apps/nginx.yaml"]
    assert invoke(served_cp, "start", "nginx")[1] == "✔ Starting nginx\n"
    assert invoke(served_cp, "rm", "nginx")[1] == "✔ Removing nginx\n"
    assert "apps/nginx.yaml" not in cp.repo.read(cp.repo.head()).files


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command and group, subcommands included ("rollout status")."""
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


@pytest.mark.parametrize("name,command", _commands(cli))
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    assert command.help and "Example: docklet" in command.help, f"`docklet {name}` lacks an example"


def test_the_cli_has_no_way_into_the_database_or_the_repository() -> None:
    code = (
        "import sys, docklet.cli.main; "
        "print(sorted(m for m in ('sqlite3', 'pygit2', 'docklet.cp.store.db', "
        "'docklet.cp.desired.gitrepo', 'docklet.cp.service.controlplane', 'pydantic') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_app_names_are_sent_as_one_path_segment(served_cp: str, cp: ControlPlane) -> None:
    invoke(served_cp, "run", "nginx", "--name", "victim", "--detach")
    code, _, err = invoke(served_cp, "rm", "victim?oops")
    assert code == ExitCode.CLIENT_ERROR and "does not exist" in err
    code, _, err = invoke(served_cp, "stop", "é")
    assert code == ExitCode.CLIENT_ERROR
    assert "apps/victim.yaml" in cp.repo.read(cp.repo.head()).files


def test_a_non_ascii_user_name_still_commits(
    served_cp: str, cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGNAME", "josé")
    monkeypatch.setenv("USER", "josé")
    code, _, err = invoke(served_cp, "run", "nginx", "--detach")
    assert code == ExitCode.OK, err
    assert cp.repo.read(cp.repo.head()).author.startswith("jos_@")


def test_an_answer_that_is_not_docklet_json_is_one_line() -> None:
    with fake_cp(200, b"<html>hello</html>") as url:
        code, _, err = invoke(url, "ps")
    assert code == ExitCode.SERVER_ERROR
    assert "is it a Docklet control plane?" in err and "Traceback" not in err


def test_ps_shows_a_spec_that_does_not_validate_even_for_a_new_app(
    served_cp: str, cp: ControlPlane
) -> None:
    cp.commit(lambda f: {"apps/bad.yaml": b"name: bad\nimage: nginx\nreplica: 2\n"}, "x", "x <x@x>")
    code, out, _ = invoke(served_cp, "ps")
    assert code == ExitCode.OK
    assert "✖ apps/bad.yaml:3: replica: unknown key" in out


def test_stopping_a_stopped_app_says_so(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    invoke(served_cp, "stop", "nginx")
    assert invoke(served_cp, "stop", "nginx")[1] == "✔ nginx is already stopped\n"


def test_version_flag(served_cp: str) -> None:
    code, out, _ = invoke(served_cp, "--version")
    assert code == ExitCode.OK and out.startswith("docklet, version ")


# -- errors leave by one path to one exit code -----------------------------------


def test_version_json_when_the_control_plane_is_down_still_fails() -> None:
    code, out, _ = invoke("http://127.0.0.1:9", "version", "--json")
    assert code == ExitCode.UNREACHABLE
    answer = json.loads(out)
    assert answer["cli"] and "cannot reach the control plane" in answer["control_plane"]["error"]
    assert answer["control_plane"]["code"] == "cp_unreachable"


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    "status,expected", [(500, ExitCode.SERVER_ERROR), (404, ExitCode.CLIENT_ERROR)]
)
def test_version_exit_code_follows_the_http_status(
    status: int, expected: ExitCode, as_json: bool
) -> None:
    error = {"error": {"code": "x", "message": "it broke", "status": status}}
    with fake_cp(status, json.dumps(error).encode()) as url:
        code, out, _ = invoke(url, "version", *(["--json"] if as_json else []))
    assert code == expected
    if as_json:
        assert json.loads(out)["control_plane"]["error"] == f"{status}: it broke"
    else:
        assert f"unavailable ({status}: it broke)" in out


def test_interrupted_has_its_own_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(**kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(docklet.cli.main, "cli", interrupted)
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == ExitCode.INTERRUPTED == 130


# -- answers Docklet cannot read, and the CLI's own bugs -------------------------


@pytest.mark.parametrize(
    "args,answer,problem",
    [
        (["version"], {}, "missing 'version'"),
        (["version", "--json"], {"version": "1", "api": 1}, "'api' is an integer, not a string"),
        (["run", "nginx", "-d"], {}, "missing 'name'"),
        (["ps"], [{"name": "x"}], "missing '[0].revision'"),
        (["ps", "--json"], {}, "the answer is an object, not a list"),
        (["nodes"], [{"node_id": "n", "status": "online"}], "missing '[0].last_seen_ago'"),
        (["stop", "x"], {}, "missing 'app'"),
        (["rm", "x"], {}, "missing 'app'"),
        (["start", "x"], {"app": "x"}, "missing 'commit'"),
        (["stop", "x"], {"app": "y", "commit": "abc"}, "it is about app 'y'"),
        (["update", "x", "--image", "y"], {}, "missing 'name'"),
        (["update", "x", "--image", "y", "--json"], {"name": "x"}, "missing 'revision'"),
        (
            ["update", "nginx", "--image", "y", "-d"],
            {**app_view(), "rollout": {**rollout("canary"), "id": "7"}},
            "'rollout.id' is a string, not an integer",
        ),
        (["update", "x", "--image", "y"], app_view(), "it is about app 'nginx'"),
        (["rollback", "x", "--to", "v1"], {"name": "x", "revision": "v1"}, "missing 'commit'"),
        (["rollback", "x"], [{"revision": "v1"}], "missing '[0].status'"),
        (["rollout", "retry", "x"], [], "the answer is a list, not an object"),
        (
            ["rollout", "status", "x"],
            [rollout("canary", evidence={})],
            "missing '[0].evidence.error'",
        ),
        (["history", "x"], [{"revision": "v1", "status": "stable"}], "missing '[0].image'"),
        (["ps"], [{**app_view(), "rollout": {"id": 7}}], "missing '[0].rollout.status'"),
    ],
)
def test_an_answer_without_what_a_command_needs_is_a_server_error(
    args: list[str], answer: object, problem: str
) -> None:
    # A 200 `{}` must not print ✔ nor exit 0: the CLI says what the answer lacks.
    with fake_cp(200, json.dumps(answer).encode()) as url:
        code, out, err = invoke(url, *args)
    assert code == ExitCode.SERVER_ERROR, (out, err)
    assert "✔" not in out
    # `docklet version` reports the control plane's failure on stdout, next to its own version.
    said = err if args[0] != "version" else out
    assert f"gave an answer Docklet cannot read: {problem}" in said
    assert "compatible version?" in said


def test_a_bug_of_the_cli_is_not_disguised_as_a_bad_answer(
    served_cp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(docklet.cli.main, "_table", broken)
    monkeypatch.setattr(sys, "argv", ["docklet", "--cp", served_cp, "nodes"])
    with pytest.raises(KeyError, match="a bug"):
        main()


def test_a_null_commit_is_an_answer_too(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    invoke(served_cp, "stop", "nginx")
    code, out, _ = invoke(served_cp, "stop", "nginx", "--json")
    assert code == ExitCode.OK
    assert json.loads(out)["commit"] is None and json.loads(out)["app"] == "nginx"


# -- usage errors, caught before any request --------------------------------------


@pytest.mark.parametrize(
    "url,problem",
    [
        ("http://localhost:abc", "port that is not a number"),
        ("http://localhost:99999", "port that is not a number"),
        ("http://local host", "has spaces"),
        ("ftp://x", "not an http:// or https:// URL"),
        ("localhost:8080", "not an http:// or https:// URL"),
        ("", "it is empty"),
        ("http://", "has no host name"),
        ("http://x/?a=b", "query or fragment"),
    ],
)
def test_a_malformed_control_plane_url_is_a_usage_error(url: str, problem: str) -> None:
    for args in (["ps"], ["version", "--json"], ["stop", "nginx"]):
        code, out, err = invoke(url, *args)
        assert code == ExitCode.USAGE, (args, out, err)
        assert "--cp" in err and problem in err, err


def test_help_works_with_a_malformed_control_plane_url() -> None:
    result = CliRunner().invoke(cli, ["ps", "--help"], env={"DOCKLET_CP": "http://x:abc"})
    assert result.exit_code == ExitCode.OK and "Example: docklet ps" in result.stdout


@pytest.mark.parametrize(
    "args,param",
    [
        (["stop", "\udcff"], "NAME"),
        (["start", "a\udcffb"], "NAME"),
        (["rm", "\udcff"], "NAME"),
        (["run", "nginx", "--name", "\udcff"], "--name"),
        (["run", "\udcff"], "IMAGE"),
        (["run", "nginx", "-e", "A=\udcff"], "-e"),
        (["run", "nginx", "-p", "\udcff"], "-p"),
        (["update", "\udcff", "--image", "x"], "NAME"),
        (["update", "x", "--command", "\udcff"], "--command"),
        (["rollback", "x", "--to", "\udcff"], "--to"),
        (["rollout", "status", "\udcff"], "NAME"),
        (["history", "\udcff"], "NAME"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(args: list[str], param: str) -> None:
    # Python hands a non-UTF-8 argv byte (b"\xff") over as the lone surrogate "\udcff".
    code, _, err = invoke("http://127.0.0.1:9", *args)
    assert code == ExitCode.USAGE, err
    assert param in err and "\\xff" in err and "' is not valid UTF-8 text" in err


def test_a_non_utf8_name_from_the_shell_is_a_usage_error() -> None:
    done = docklet_process("--cp", "http://127.0.0.1:9", "stop", b"\xff")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "NAME" in done.stderr and "not valid UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["version"], ["version", "--json"], ["ps"]])
def test_the_installed_command_exits_with_the_same_codes(args: list[str]) -> None:
    # main() runs click without standalone mode, which returns exit codes instead of raising.
    done = docklet_process("--cp", "http://127.0.0.1:9", *args)
    assert done.returncode == ExitCode.UNREACHABLE, (done.stdout, done.stderr)
    assert docklet_process("--version").returncode == ExitCode.OK


# -- rollouts: update, rollback, rollout retry/status, history, ps -----------------


def test_update_follows_the_rollout_phase_by_phase() -> None:
    states = (
        rollout("canary"),
        rollout("verifying", deadline=time.time() + 10),
        rollout("verifying"),  # the same phase again says nothing new
        rollout("promoting", done=1),
        rollout("promoting", done=2),
        rollout("stable", done=3),
    )
    with scripted_cp(update_script(*states)) as (url, received):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.OK, err
    assert out.splitlines() == [
        "🔥 Triggering rollout...",
        "… canary v3 on node-1 (slot 1)",
        "… canary running, verifying health",
        "… promoting 1/3",
        "… promoting 2/3",
        "✔ nginx v3 is stable (3/3)",
    ]
    assert received[0] == ("POST", "/api/apps/nginx/update", {"image": "nginx:1.26"})
    assert {path for _, path, _ in received[1:]} == {ROLLOUT_PATH}


def test_update_sends_every_field_run_takes() -> None:
    script = update_script(rollout("stable", done=3))
    with scripted_cp(script) as (url, received):
        args = ["--replicas", "3", "-e", "A=1", "-e", "B=x=y", "-p", "8080:80", "--command", "a b"]
        code, _, err = invoke(url, "update", "nginx", *args, "-d")
    assert code == ExitCode.OK, err
    assert received[0][2] == {
        "replicas": 3,
        "env": {"A": "1", "B": "x=y"},
        "ports": ["8080:80"],
        "command": "a b",
    }


def test_a_failed_canary_is_rolled_back_and_exits_1() -> None:
    failed = {"failed_phase": "verifying", "reason": "health check failed", "done": 0}
    states = (
        rollout("verifying"),
        rollout("rolling_back", **failed),
        rollout("rolling_back", **failed),
        rollout("rolled_back", **failed),
    )
    with scripted_cp(update_script(*states)) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:bad")
    assert code == ExitCode.ERROR == 1
    assert out.splitlines() == [
        "🔥 Triggering rollout...",
        "… canary v3 on node-1 (slot 1)",
        "… canary running, verifying health",
        "✖ Canary failed",
        "↩ Rolling back to previous revision",
    ]
    assert err == "✖ nginx v3 rolled back: health check failed\n"


def test_a_failure_while_promoting_says_where_even_when_the_rollback_was_not_seen() -> None:
    failed = {"failed_phase": "promoting", "reason": "exited with 1", "done": 2}
    states = (rollout("promoting", done=1), rollout("rolled_back", **failed))
    with scripted_cp(update_script(*states)) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:bad")
    assert code == ExitCode.ERROR
    assert out.splitlines()[-3:] == [
        "… promoting 1/3",
        "✖ Rollout failed at 2/3",
        "↩ Rolling back to previous revision",
    ]
    assert err == "✖ nginx v3 rolled back: exited with 1\n"


@pytest.mark.parametrize(
    "status,said,rolled_back",
    [
        ("rollback_failed", "✖ nginx v3: rollback failed: no node\n", True),
        ("superseded", "! nginx v3 was superseded by a newer revision\n", False),
        ("failed", "✖ nginx v3 failed: no node\n", False),  # automatic rollback is off
    ],
)
def test_every_failed_outcome_exits_1(status: str, said: str, rolled_back: bool) -> None:
    failed = {"failed_phase": "canary", "reason": "no node"} if status != "superseded" else {}
    with scripted_cp(update_script(rollout(status, **failed))) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.ERROR
    assert err == said
    assert ("↩ Rolling back to previous revision" in out) == rolled_back
    assert "✔" not in out


def test_the_installed_command_exits_1_for_a_failed_rollout() -> None:
    script = update_script(rollout("superseded"), rollout=rollout("superseded"))
    with scripted_cp(script) as (url, _):
        done = docklet_process("--cp", url, "update", "nginx", "--image", "nginx:1.26")
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert done.stdout == "🔥 Triggering rollout...\n"
    assert done.stderr == "! nginx v3 was superseded by a newer revision\n"


def test_an_unchanged_spec_is_done_at_once() -> None:
    script = update_script(commit=None, rollout=None, revision="v2", running_revision="v2")
    with scripted_cp(script) as (url, received):
        code, out, _ = invoke(url, "update", "nginx", "--image", "nginx:1.25")
    assert code == ExitCode.OK
    assert out == "✔ nginx is unchanged (v2)\n"
    assert len(received) == 1


def test_a_held_spec_is_said_on_stderr_and_exits_1() -> None:
    held = "the new spec is held: it failed before; retry with docklet rollout retry nginx"
    with scripted_cp(update_script(held=held, rollout=None)) as (url, received):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:bad")
    assert code == ExitCode.ERROR
    assert out == "" and held in err and err.count("\n") == 1
    assert len(received) == 1


def test_update_detach_returns_once_triggered() -> None:
    with scripted_cp(update_script(rollout("canary"))) as (url, received):
        code, out, _ = invoke(url, "update", "nginx", "--image", "nginx:1.26", "-d")
    assert code == ExitCode.OK
    assert out == "🔥 Triggering rollout...\n"
    assert len(received) == 1


def test_a_rollout_that_does_not_finish_in_time_names_its_phase() -> None:
    with scripted_cp(update_script(rollout("verifying", done=1))) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "x", "--timeout", "0.2")
    assert code == ExitCode.TIMEOUT
    assert out.splitlines()[-1] == "… canary running, verifying health"
    assert "nginx v3 is still verifying (1/3) after 0.2s" in err
    assert "docklet rollout status nginx" in err


def test_following_a_rollout_outlasts_a_control_plane_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = docklet.wire.client.Client.request
    failures = iter([True, True])

    def flaky(self: docklet.wire.client.Client, method: str, path: str, *a: Any, **kw: Any) -> Any:
        if path == ROLLOUT_PATH and next(failures, False):
            raise CPUnreachable("cannot reach the control plane: connection refused")
        return request(self, method, path, *a, **kw)

    monkeypatch.setattr(docklet.wire.client.Client, "request", flaky)
    with scripted_cp(update_script(rollout("stable", done=3))) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.OK, err
    assert out.splitlines()[-1] == "✔ nginx v3 is stable (3/3)"


def test_a_control_plane_gone_for_good_is_unreachable_once_the_time_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = docklet.wire.client.Client.request

    def gone(self: docklet.wire.client.Client, method: str, path: str, *a: Any, **kw: Any) -> Any:
        if path == ROLLOUT_PATH:
            raise CPUnreachable("cannot reach the control plane: connection refused")
        return request(self, method, path, *a, **kw)

    monkeypatch.setattr(docklet.wire.client.Client, "request", gone)
    with scripted_cp(update_script()) as (url, _):
        code, _, err = invoke(url, "update", "nginx", "--image", "x", "--timeout", "0.1")
    assert code == ExitCode.UNREACHABLE
    assert err == "✖ cannot reach the control plane: connection refused\n"


def test_without_a_rollout_update_waits_for_the_app_to_run() -> None:
    # A first revision, or an app that has no running revision to canary against.
    script = update_script(rollout=None)
    script[("GET", "/api/apps/nginx")] = [
        (200, app_view(actual="pending", running=0)),
        (200, app_view()),
    ]
    with scripted_cp(script) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--replicas", "3")
    assert code == ExitCode.OK, err
    assert out == "🔥 Triggering rollout...\n✔ Running on node-1 (3/3)\n"


def test_updating_a_stopped_app_does_not_wait_for_it_to_run() -> None:
    script = update_script(rollout=None)
    script[("GET", "/api/apps/nginx")] = [(200, app_view(desired="stopped", actual="stopped"))]
    with scripted_cp(script) as (url, _):
        code, out, _ = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.OK
    assert out.splitlines()[-1] == "✔ nginx is stopped: docklet start nginx runs it"


@pytest.mark.parametrize("status,code", [("stable", ExitCode.OK), ("rolled_back", ExitCode.ERROR)])
def test_update_json_is_the_answer_with_the_rollout_as_it_ended(
    status: str, code: ExitCode
) -> None:
    script = update_script(rollout("verifying"), rollout(status, done=3, reason="r"))
    with scripted_cp(script) as (url, _):
        got, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26", "--json")
    assert got == code, err
    answer = json.loads(out)  # only the JSON on stdout, whatever the outcome
    assert answer["commit"] == "0123456789abcdef" and answer["rollout"]["status"] == status


def test_update_without_fields_is_a_usage_error() -> None:
    code, _, err = invoke("http://127.0.0.1:9", "update", "nginx")
    assert code == ExitCode.USAGE and "nothing to update" in err


def test_a_rollout_of_another_app_is_a_bad_answer() -> None:
    with scripted_cp(update_script(rollout("stable", app="web"))) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.SERVER_ERROR
    assert "it is about rollout 7 of app 'web'" in err and "✔" not in out


def test_rollback_to_a_revision_follows_its_rollout() -> None:
    script = {
        ("POST", "/api/apps/nginx/rollback"): [(200, app_view(revision="v4"))],
        ("GET", ROLLOUT_PATH): [(200, rollout("stable", revision="v4", done=3))],
    }
    with scripted_cp(script) as (url, received):
        code, out, err = invoke(url, "rollback", "nginx", "--to", "v2")
    assert code == ExitCode.OK, err
    assert out.splitlines()[0] == "↩ Rolling back nginx to v2"
    assert out.splitlines()[-1] == "✔ nginx v4 is stable (3/3)"
    assert received[0] == ("POST", "/api/apps/nginx/rollback", {"to": "v2"})


def test_rollback_names_the_previous_stable_revision_without_sending_it() -> None:
    revisions = [
        {"revision": "v3", "status": "stable"},
        {"revision": "v2", "status": "replaced"},
        {"revision": "v1", "status": "replaced"},
    ]
    script = {
        ("GET", "/api/apps/nginx/revisions"): [(200, revisions)],
        ("POST", "/api/apps/nginx/rollback"): [(200, app_view(revision="v4"))],
    }
    with scripted_cp(script) as (url, received):
        code, out, _ = invoke(url, "rollback", "nginx", "-d")
    assert code == ExitCode.OK
    assert out == "↩ Rolling back nginx to v2\n"
    assert received[1] == ("POST", "/api/apps/nginx/rollback", {})


def test_rollout_retry_releases_the_hold_and_follows() -> None:
    # Releasing a hold commits nothing: the rollout is followed all the same.
    script = {
        ("POST", "/api/apps/nginx/rollouts/retry"): [(200, app_view(commit=None))],
        ("GET", ROLLOUT_PATH): [(200, rollout("stable", done=3))],
    }
    with scripted_cp(script) as (url, received):
        code, out, err = invoke(url, "rollout", "retry", "nginx")
    assert code == ExitCode.OK, err
    assert out.splitlines()[0] == "🔥 Triggering rollout..."
    assert out.splitlines()[-1] == "✔ nginx v3 is stable (3/3)"
    assert received[0] == ("POST", "/api/apps/nginx/rollouts/retry", None)


def test_rollout_status_shows_phase_progress_deadlines_and_evidence() -> None:
    latest = rollout(
        "rolling_back",
        done=1,
        deadline=time.time() + 42.4,
        progress_deadline=time.time() - 1,
        failed_phase="verifying",
        reason="unhealthy after 30s",
        evidence={"error": None, "exit_code": 1, "health": "unhealthy", "logs": "one\ntwo\n"},
    )
    script = {("GET", "/api/apps/nginx/rollouts"): [(200, [latest, rollout("stable")])]}
    with scripted_cp(script) as (url, _):
        code, out, err = invoke(url, "rollout", "status", "nginx")
        json_code, json_out, _ = invoke(url, "rollout", "status", "nginx", "--json")
    assert code == ExitCode.OK, err
    fields = {line.split("   ")[0].strip(): line for line in out.splitlines()}
    assert "7: v2 → v3" in fields["rollout"]
    assert fields["status"].endswith("rolling_back")
    assert fields["canary"].endswith("node-1 (slot 1)")
    assert fields["progress"].endswith("1/3")
    assert re.search(r"in 4[12]s$", fields["phase deadline"])
    assert fields["progress deadline"].endswith("passed")
    assert fields["failed in"].endswith("verifying")
    assert fields["reason"].endswith("unhealthy after 30s")
    assert fields["exit code"].endswith("1") and fields["health"].endswith("unhealthy")
    assert out.endswith("last log lines (2):\n    one\n    two\n")
    assert json_code == ExitCode.OK and json.loads(json_out)["status"] == "rolling_back"


def test_rollout_status_of_an_app_without_rollouts() -> None:
    with scripted_cp({("GET", "/api/apps/nginx/rollouts"): [(200, [])]}) as (url, _):
        said = invoke(url, "rollout", "status", "nginx")
        as_json = invoke(url, "rollout", "status", "nginx", "--json")
    assert said[:2] == (ExitCode.OK, "nginx has had no rollout yet\n")
    assert as_json[:2] == (ExitCode.OK, "null\n")


def test_history_lists_revisions_newest_first_shortened() -> None:
    revisions = [
        {
            "revision": "v2",
            "commit_sha": "fedcba9876543210",
            "author": "alice@host <alice@host>",
            "message": "Update app nginx: image=nginx:1.26\n\nmore",
            "image": "nginx:1.26",
            "image_digest": "sha256:" + "ab" * 32,
            "status": "rolled_back",
            "reason": "canary unhealthy",
            "created_at": 2.0,
        },
        {
            "revision": "v1",
            "commit_sha": "0123456789abcdef",
            "author": "bob <bob@x>",
            "message": "Create app nginx (nginx:1.25)",
            "image": "nginx:1.25",
            "image_digest": None,
            "status": "stable",
            "reason": None,
            "created_at": 1.0,
        },
    ]
    with scripted_cp({("GET", "/api/apps/nginx/revisions"): [(200, revisions)]}) as (url, _):
        code, out, err = invoke(url, "history", "nginx")
        _, json_out, _ = invoke(url, "history", "nginx", "--json")
    assert code == ExitCode.OK, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "REVISION", "STATUS", "IMAGE", "DIGEST", "COMMIT", "AUTHOR", "MESSAGE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "v2", "rolled_back", "nginx:1.26", "abababababab", "fedcba98", "alice@host",
        "Update", "app", "nginx:", "image=nginx:1.26",
    ]  # fmt: skip
    assert lines[2].split()[:6] == ["v1", "stable", "nginx:1.25", "-", "01234567", "bob"]
    assert lines[3] == "v2: canary unhealthy"
    assert json.loads(json_out) == revisions


def test_ps_says_when_the_desired_revision_failed_and_an_older_one_runs() -> None:
    held = "the new spec is held: it failed before; retry with docklet rollout retry nginx"
    row = {
        **app_view(status="stable", held=held, rollout=rollout("rolled_back")),
        "desired": "running",
        "sync_error": None,
    }
    script = {
        ("GET", "/api/state/apps?brief=true"): [(200, [row])],
        ("GET", "/api/state/sync"): [(200, {"errors": []})],
    }
    with scripted_cp(script) as (url, _):
        code, out, err = invoke(url, "ps")
    assert code == ExitCode.OK, err
    lines = out.splitlines()
    assert lines[1].split() == ["nginx", "v3", "running", "running", "node-1", "stable"]
    assert lines[2:] == ["nginx: desired v3 failed, running v2", f"nginx: {held}"]


def test_ps_shows_the_revision_being_rolled_out() -> None:
    row = {**app_view(revision="v2", running_revision="v1"), "desired": "running"}
    script = {
        ("GET", "/api/state/apps?brief=true"): [(200, [row])],
        ("GET", "/api/state/sync"): [(200, {"errors": []})],
    }
    with scripted_cp(script) as (url, _):
        code, out, _ = invoke(url, "ps")
    assert code == ExitCode.OK
    assert out.splitlines()[1:] == [out.splitlines()[1]]  # a rollout under way is no failure
    assert out.splitlines()[1].split()[1::4] == ["v2", "rolling_update"]


def test_a_shape_may_be_null_or_an_object_checked_inside() -> None:
    expected = {"rollout": (ROLLOUT, NULL)}
    assert mismatch({"rollout": None}, expected) is None
    assert mismatch({"rollout": rollout("canary")}, expected) is None
    assert mismatch({"rollout": "7"}, expected) == "'rollout' is a string, not an object or null"
    broken = {**rollout("canary"), "done": "1"}
    assert mismatch({"rollout": broken}, expected) == "'rollout.done' is a string, not an integer"
