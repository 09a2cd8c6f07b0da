"""The CLI as a whole against a real CP over HTTP on loopback: version, nodes, help, exit codes,
answers it cannot read, usage errors. Each command group has its own file beside this one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from clilab import ROOT, add_node, app_view, docklet_process, fake_cp, invoke, rollout

import docklet.cli.main
import docklet.cli.nodes
from docklet.cli.base import ExitCode
from docklet.cli.main import cli, main
from docklet.cli.monitor import ROLLOUT
from docklet.cp.service.controlplane import ControlPlane
from docklet.wire.client import NULL, check_url, mismatch


def test_version_shows_cli_and_control_plane(served_cp: str) -> None:
    code, out, _ = invoke(served_cp, "version")
    assert code == ExitCode.OK
    assert "docklet CLI" in out and "control plane" in out and "API v1" in out


def test_version_flag(served_cp: str) -> None:
    code, out, _ = invoke(served_cp, "--version")
    assert code == ExitCode.OK and out.startswith("docklet, version ")


def test_nodes_lists_the_real_control_planes_nodes(served_cp: str, cp: ControlPlane) -> None:
    # The shapes the CLI checks answers against must match what the real API says.
    add_node(cp)
    code, out, err = invoke(served_cp, "nodes")
    assert code == ExitCode.OK, err
    assert out.splitlines()[1].split()[:2] == ["node-1", "online"]
    code, out, _ = invoke(served_cp, "nodes", "--json")
    assert code == ExitCode.OK and json.loads(out)[0]["node_id"] == "node-1"


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

    monkeypatch.setattr(docklet.cli.nodes, "table", broken)
    monkeypatch.setattr(sys, "argv", ["docklet", "--cp", served_cp, "nodes"])
    with pytest.raises(KeyError, match="a bug"):
        main()


def test_a_shape_may_be_null_or_an_object_checked_inside() -> None:
    expected = {"rollout": (ROLLOUT, NULL)}
    assert mismatch({"rollout": None}, expected) is None
    assert mismatch({"rollout": rollout("canary")}, expected) is None
    assert mismatch({"rollout": "7"}, expected) == "'rollout' is a string, not an object or null"
    broken = {**rollout("canary"), "done": "1"}
    assert mismatch({"rollout": broken}, expected) == "'rollout.done' is a string, not an integer"


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
        # Brackets: an IPv6 address in [ ], nothing else, and only once.
        ("http://[::1", "brackets"),
        ("http://::1]:8080", "brackets"),
        ("http://[::1]]", "brackets"),
        ("http://[::1]x", "brackets"),
        ("http://[::1]:80x", "port that is not a number"),
        ("http://a]b", "brackets"),
        ("http://[zz]:8080", "brackets"),
        ("http://[127.0.0.1]", "brackets"),
        ("http://[v1.x]", "brackets"),
        # Ports: a number from 1 to 65535, once.
        ("http://[::1]:99999", "port that is not a number"),
        ("http://localhost:-1", "port that is not a number"),
        ("http://localhost:0", "port that is not a number"),
        ("http://localhost:80:90", "port that is not a number"),
        ("http://localhost:８０", "has spaces or characters"),
        # Schemes and hosts.
        ("//localhost:8080", "not an http:// or https:// URL"),
        ("javascript:alert(1)", "not an http:// or https:// URL"),
        ("unix:///var/run/docklet.sock", "not an http:// or https:// URL"),
        ("http:/localhost", "has no host name"),
        ("http://exa%41mple.com", "not a host name"),
        ("http://a..b", "not a host name"),
        ("http://under_score!", "not a host name"),
        ("http://admin:secret@localhost", "user name or password"),
        # Spaces and control characters, wherever they are.
        (" http://localhost", "has spaces"),
        ("http://localhost:8080/ ", "has spaces"),
        ("http://local\thost", "has spaces"),
        ("http://local\x00host", "has spaces"),
        ("http://localhost\r\nX-Evil: 1", "has spaces"),
        ("http://localhost\x7f", "has spaces"),
    ],
)
def test_a_malformed_control_plane_url_is_a_usage_error(url: str, problem: str) -> None:
    for args in (["ps"], ["version", "--json"], ["stop", "nginx"]):
        code, out, err = invoke(url, *args)
        assert code == ExitCode.USAGE, (args, out, err)
        assert "--cp" in err and problem in err, err
        assert "Traceback" not in err + out


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]", "http://h:80:90", "ftp://x"])
def test_a_malformed_url_from_the_environment_is_one_line_and_exit_2(url: str) -> None:
    # As the issue ran it: the installed command, the URL from DOCKLET_CP or --cp.
    for args, env in ((["ps"], {"DOCKLET_CP": url}), (["--cp", url, "ps"], {})):
        done = subprocess.run(
            [sys.executable, "-m", "docklet", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            timeout=60,
        )
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and "'--cp' / DOCKLET_CP" in lines[0], done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "https://cp.example.com",
        "http://[::1]:8080",
        "http://[fe80::1]",
        "http://127.0.0.1:8080/docklet/",
        "HTTP://LOCALHOST",
        "http://my_host.internal.:80",
        "http://localhost:",
    ],
)
def test_a_well_formed_control_plane_url_is_accepted(url: str) -> None:
    assert check_url(url) is None


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
