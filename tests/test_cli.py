"""The CLI against a real CP over HTTP on loopback: output, exit codes, help."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import docklet.cli
from docklet.cli import ExitCode, cli, main
from docklet.controlplane import ControlPlane
from docklet.nodes import register
from docklet.protocol import Registration


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--cp", url, *args])
    return result.exit_code, result.stdout, result.stderr


ROOT = Path(__file__).resolve().parents[1]  # this checkout, whichever venv runs the tests


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


def _commands(group: click.Group) -> list[tuple[str, click.Command]]:
    return sorted(group.commands.items())


@pytest.mark.parametrize("name,command", _commands(cli))
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    assert command.help and "Example: docklet" in command.help, f"`docklet {name}` lacks an example"


def test_the_cli_has_no_way_into_the_database_or_the_repository() -> None:
    code = (
        "import sys, docklet.cli; "
        "print(sorted(m for m in ('sqlite3', 'pygit2', 'docklet.store', 'docklet.gitrepo', "
        "'docklet.controlplane') if m in sys.modules))"
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

    monkeypatch.setattr(docklet.cli, "cli", interrupted)
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
    assert f"gave an answer Docklet cannot read: {problem};" in said
    assert "compatible version?" in said


def test_a_bug_of_the_cli_is_not_disguised_as_a_bad_answer(
    served_cp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(docklet.cli, "_table", broken)
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
