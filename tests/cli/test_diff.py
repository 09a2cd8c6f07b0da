"""`docklet diff` as CI runs it on a pull request: a clone of the CP's hosted repository (real
`git` over HTTP), a file edited in its working tree, `docklet diff` run in it as a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from clilab import ROOT, add_node
from conftest import ADMIN_TOKEN

from docklet.cli.base import ExitCode
from docklet.cli.main import cli
from docklet.cp.service.controlplane import ControlPlane

WEB = "name: web\nimage: nginx:1.25\n"


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "credential.helper="]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def docklet(cwd: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`docklet --cp URL ARGS` as a process in `cwd` (a working tree), as CI would run it."""
    return subprocess.run(
        [sys.executable, "-m", "docklet", "--cp", url, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DOCKLET_TOKEN": ADMIN_TOKEN},
        timeout=60,
    )


@pytest.fixture
def work(served_cp: str, cp: ControlPlane, tmp_path: Path) -> Path:
    """A clone of the CP's repository holding apps web and api, on a cluster of one node."""
    add_node(cp)
    cp.apps.create({"name": "web", "image": "nginx:1.25"}, "t <t@t>")
    cp.apps.create({"name": "api", "image": "nginx:1.25", "replicas": 2}, "t <t@t>")
    host = served_cp.removeprefix("http://")
    cloned = git(tmp_path, "clone", "-q", f"http://x:{ADMIN_TOKEN}@{host}/git/apps.git", "work")
    assert cloned.returncode == 0, cloned.stderr
    return tmp_path / "work"


def test_an_unchanged_working_tree_exits_0(served_cp: str, work: Path) -> None:
    done = docklet(work, served_cp, "diff")
    assert done.returncode == ExitCode.DIFF_NONE, done.stderr
    assert done.stdout == "= 2 app(s) unchanged\n✔ No changes\n"


def test_a_changed_file_exits_1_and_says_what_changes(
    served_cp: str, cp: ControlPlane, work: Path
) -> None:
    spec = work / "apps" / "web.yaml"
    spec.write_text(spec.read_text().replace("image: nginx:1.25", "image: nginx:1.25\nreplicas: 3"))
    (work / "apps" / "api.yaml").unlink()
    (work / "apps" / "db.yaml").write_text("name: db\nimage: postgres:16\n")
    head = cp.repo.head()
    done = docklet(work, served_cp, "diff")
    assert done.returncode == ExitCode.DIFF_CHANGES, done.stderr
    lines = done.stdout.splitlines()
    assert "+ db: create → v1, applies directly, no rollout" in lines
    assert "- api: remove, its containers are removed" in lines
    assert "~ web: update → v2, applies directly, no rollout" in lines  # a scale
    assert "    replicas: 1 → 3" in lines
    assert "    slots: 2 deploy on node-1, 3 deploy on node-1" in lines
    assert lines[-1] == "Plan: 1 to create, 1 to update, 1 to remove"
    assert "\x1b[" not in done.stdout  # colours only on a terminal
    assert cp.repo.head() == head  # a diff commits nothing
    # One file: only its app; an app without a file in the tree is not removed.
    one = docklet(work, served_cp, "diff", "apps/web.yaml", "--json")
    assert one.returncode == ExitCode.DIFF_CHANGES, one.stderr
    answer = json.loads(one.stdout)
    assert [(a["app"], a["change"], a["revision"]) for a in answer["apps"]] == [
        ("web", "update", "v2")
    ]
    assert answer["apps"][0]["fields"] == [{"field": "replicas", "old": 1, "new": 3}]


def test_an_invalid_file_exits_4_with_the_file_line_a_push_is_refused_with(
    served_cp: str, work: Path
) -> None:
    (work / "apps" / "web.yaml").write_text(WEB + "replicas: many\nport: 80\n")
    done = docklet(work, served_cp, "diff")
    assert done.returncode == ExitCode.DIFF_INVALID, done.stderr
    said = [line.removeprefix("✖ ") for line in done.stdout.splitlines() if line.startswith("✖")]
    assert [s.split(": ", 1)[0] for s in said] == ["apps/web.yaml:3", "apps/web.yaml:4"]
    assert "a push of them would be refused" in done.stderr
    # The same words a push of the same tree is refused with.
    git(work, "commit", "-qam", "Break web")
    pushed = git(work, "push", "origin", "main")
    assert pushed.returncode != 0
    remote = [line.rstrip() for line in pushed.stderr.splitlines()]
    assert f"remote:   {'; '.join(said)}" in remote  # the hook says a file's problems on a line


def test_what_cannot_be_sent_is_invalid_and_not_a_removal(served_cp: str, work: Path) -> None:
    web = work / "apps" / "web.yaml"
    web.write_bytes(b"name: web\nimage: nginx:1.25\nenv:\n  A: caf\xe9\n")
    (work / "apps" / "extra").mkdir()
    done = docklet(work, served_cp, "diff")
    assert done.returncode == ExitCode.DIFF_INVALID, done.stderr
    assert "✖ apps/web.yaml:4: not UTF-8: byte 0xe9" in done.stdout
    assert "✖ apps/extra: ignored: specs are read from apps/ itself" in done.stdout
    assert "remove" not in done.stdout  # web is kept, as sync keeps an app whose file is bad


def test_a_directory_that_is_no_working_tree_is_a_usage_error(
    served_cp: str, tmp_path: Path
) -> None:
    done = docklet(tmp_path, served_cp, "diff")
    assert done.returncode == ExitCode.USAGE
    assert "no apps/ directory" in done.stderr


def test_changes_are_coloured_on_a_terminal(served_cp: str, work: Path) -> None:
    (work / "apps" / "db.yaml").write_text("name: db\nimage: postgres:16\n")
    result = CliRunner().invoke(cli, ["--cp", served_cp, "diff", str(work)], color=True)
    assert result.exit_code == ExitCode.DIFF_CHANGES, result.output
    assert "\x1b[32m\x1b[1m+ db: create → v1" in result.output  # green, bold
    assert "\x1b[32mpostgres:16\x1b[0m" in result.output  # the new value green
