"""`docklet run`, `ps`, `stop`, `start` and `rm` against a real CP (or a scripted one)
on loopback.
"""

from __future__ import annotations

import json

from clilab import add_node, app_view, invoke, rollout, scripted_cp

from docklet.cli.base import ExitCode
from docklet.cp.service.controlplane import ControlPlane


def test_run_detach_prints_the_seed_lines_and_commits(served_cp: str, cp: ControlPlane) -> None:
    add_node(cp)
    code, out, err = invoke(served_cp, "run", "nginx", "--detach", "-p", "8080:80", "-e", "A=b")
    assert code == ExitCode.OK, err
    assert out == "✔ Creating deployment nginx\n✔ Task scheduled\n"
    files = cp.repo.read(cp.repo.head()).files
    text = files["apps/nginx.yaml"].decode()
    assert "image: nginx:latest" in text and "8080:80" in text and "A: b" in text


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


def test_bad_env_flag_is_a_usage_error(served_cp: str) -> None:
    code, _, err = invoke(served_cp, "run", "nginx", "-e", "NOEQUALS")
    assert code == ExitCode.USAGE
    assert "KEY=VALUE" in err


def test_app_names_are_sent_as_one_path_segment(served_cp: str, cp: ControlPlane) -> None:
    invoke(served_cp, "run", "nginx", "--name", "victim", "--detach")
    code, _, err = invoke(served_cp, "rm", "victim?oops")
    assert code == ExitCode.CLIENT_ERROR and "does not exist" in err
    code, _, err = invoke(served_cp, "stop", "é")
    assert code == ExitCode.CLIENT_ERROR
    assert "apps/victim.yaml" in cp.repo.read(cp.repo.head()).files


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


def test_ps_shows_a_spec_that_does_not_validate_even_for_a_new_app(
    served_cp: str, cp: ControlPlane
) -> None:
    cp.apps.commit(
        lambda f: {"apps/bad.yaml": b"name: bad\nimage: nginx\nreplica: 2\n"}, "x", "x <x@x>"
    )
    code, out, _ = invoke(served_cp, "ps")
    assert code == ExitCode.OK
    assert "✖ apps/bad.yaml:3: replica: unknown key" in out


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


def test_unknown_app_is_a_client_error(served_cp: str) -> None:
    for command in ("stop", "rm", "start"):
        code, _, err = invoke(served_cp, command, "ghost")
        assert code == ExitCode.CLIENT_ERROR
        assert "app 'ghost' does not exist" in err


def test_stop_then_start_rewrites_the_spec(served_cp: str, cp: ControlPlane) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    assert invoke(served_cp, "stop", "nginx")[1] == "✔ Stopping nginx\n"
    assert b"state: stopped" in cp.repo.read(cp.repo.head()).files["apps/nginx.yaml"]
    assert invoke(served_cp, "start", "nginx")[1] == "✔ Starting nginx\n"
    assert invoke(served_cp, "rm", "nginx")[1] == "✔ Removing nginx\n"
    assert "apps/nginx.yaml" not in cp.repo.read(cp.repo.head()).files


def test_stopping_a_stopped_app_says_so(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    invoke(served_cp, "stop", "nginx")
    assert invoke(served_cp, "stop", "nginx")[1] == "✔ nginx is already stopped\n"


def test_a_null_commit_is_an_answer_too(served_cp: str) -> None:
    invoke(served_cp, "run", "nginx", "--detach")
    invoke(served_cp, "stop", "nginx")
    code, out, _ = invoke(served_cp, "stop", "nginx", "--json")
    assert code == ExitCode.OK
    assert json.loads(out)["commit"] is None and json.loads(out)["app"] == "nginx"
