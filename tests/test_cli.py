"""The CLI against a real CP over HTTP on loopback: output, exit codes, help."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from docklet.cli import ExitCode, cli
from docklet.controlplane import ControlPlane
from docklet.nodes import register
from docklet.protocol import Registration


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--cp", url, *args])
    return result.exit_code, result.stdout, result.stderr


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


def test_an_answer_that_is_not_docklet_json_is_one_line(tmp_path) -> None:
    import http.server
    import threading

    class NotDocklet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotDocklet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, _, err = invoke(f"http://127.0.0.1:{server.server_port}", "ps")
    finally:
        server.shutdown()
    assert code == ExitCode.SERVER_ERROR
    assert "is it a Docklet control plane?" in err and "Traceback" not in err


def test_ps_shows_a_spec_that_does_not_validate_even_for_a_new_app(
    served_cp: str, cp: ControlPlane
) -> None:
    cp.commit(lambda f: {"apps/bad.yaml": b"name: bad\nimage: nginx\nreplica: 2\n"}, "x", "x <x@x>")
    code, out, _ = invoke(served_cp, "ps")
    assert code == ExitCode.OK
    assert "✖ apps/bad.yaml: replica: unknown key" in out


def test_stopping_a_stopped_app_says_so(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    invoke(served_cp, "stop", "nginx")
    assert invoke(served_cp, "stop", "nginx")[1] == "✔ nginx is already stopped\n"


def test_version_flag(served_cp: str) -> None:
    code, out, _ = invoke(served_cp, "--version")
    assert code == ExitCode.OK and out.startswith("docklet, version ")
