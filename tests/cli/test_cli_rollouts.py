"""`docklet update` following its rollout, `rollback`, `rollout retry`/`status` and `history`,
against a scripted CP on loopback.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from clilab import (
    ROLLOUT_PATH,
    app_view,
    docklet_process,
    invoke,
    rollout,
    scripted_cp,
    update_script,
)

import docklet.cli.monitor
import docklet.wire.client
from docklet.cli.base import ExitCode
from docklet.common.errors import CPUnreachable


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docklet.cli.monitor, "POLL_INTERVAL", 0.01)


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


CRASHED = "exited with code 1 after 1s, restarted 3 times"


def failed_before(**fields: Any) -> dict[str, Any]:
    """The answer to an update that asks again for v3, whose rollout failed: v2 runs."""
    failed = rollout("rolled_back", failed_phase="verifying", reason=CRASHED)
    answer = {"commit": None, "revision": "v2", "running_revision": "v2", "rollout": failed}
    return {**answer, "target_revision": "v3", "status": "stable", **fields}


def test_asking_again_for_a_revision_that_failed_says_so_and_exits_1() -> None:
    with scripted_cp(update_script(**failed_before())) as (url, received):
        code, out, err = invoke(url, "update", "nginx", "--image", "crashy:1")
        json_code, json_out, _ = invoke(url, "update", "nginx", "--image", "crashy:1", "--json")
    assert code == json_code == ExitCode.ERROR
    assert out == "" and "✔" not in err
    assert err == (
        f"✖ nginx v3 is unchanged and its rollout rolled_back: {CRASHED}; v2 runs."
        " Try it again with: docklet rollout retry nginx\n"
    )
    assert json.loads(json_out)["target_revision"] == "v3"
    assert [path for _, path, _ in received] == ["/api/apps/nginx/update"] * 2  # nothing followed


def test_an_unchanged_spec_whose_rollout_worked_or_runs_is_no_failure() -> None:
    stable = failed_before(target_revision="v2", rollout=rollout("stable", revision="v2"))
    with scripted_cp(update_script(**stable)) as (url, _):
        assert invoke(url, "update", "nginx", "--image", "nginx:1.25")[:2] == (
            ExitCode.OK,
            "✔ nginx is unchanged (v2)\n",
        )
    # An older failed rollout, of a revision no longer asked for, is history.
    older = failed_before(target_revision="v2")
    with scripted_cp(update_script(**older)) as (url, _):
        assert invoke(url, "update", "nginx", "--image", "nginx:1.25")[0] == ExitCode.OK


def test_stable_is_said_after_the_previous_revision_is_stopped() -> None:
    states = (
        rollout("promoting", done=2),
        rollout("promoting", done=3),  # verified everywhere; the old ones are stopping
        rollout("promoting", done=3),
        rollout("stable", done=3),
    )
    with scripted_cp(update_script(*states)) as (url, _):
        code, out, err = invoke(url, "update", "nginx", "--image", "nginx:1.26")
    assert code == ExitCode.OK, err
    assert out.splitlines()[-3:] == [
        "… promoting 2/3",
        "… v3 runs on every replica; stopping the previous revision",
        "✔ nginx v3 is stable (3/3)",
    ]


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
