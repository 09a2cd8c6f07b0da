"""`docklet apply -f FILE` against a real CP on loopback: it shows the plan, commits the file as
written with the caller as author (`docklet history` shows it), and an invalid file commits
nothing; with --wait it follows the change, on a real Docker engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clilab import add_node, invoke

from docklet.cli.base import ExitCode
from docklet.cp.service.controlplane import ControlPlane

WEB = "# the web tier\nname: web\nimage: nginx:1.25\nreplicas: 2\n"


def write(tmp_path: Path, text: str, name: str = "web.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_commits_the_file_and_history_shows_it(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    add_node(cp)
    code, out, err = invoke(served_cp, "apply", "-f", write(tmp_path, WEB))
    assert code == ExitCode.OK, err
    lines = out.splitlines()
    assert lines[0] == "+ web: create → v1, applies directly, no rollout"
    assert "    slots: 1 deploy on node-1, 2 deploy on node-1" in lines
    assert lines[-1] == "✔ Committed apps/web.yaml"
    assert cp.repo.read(cp.repo.head()).files["apps/web.yaml"] == WEB.encode()  # as written
    code, out, _ = invoke(served_cp, "history", "web")
    assert code == ExitCode.OK
    (row,) = out.splitlines()[1:]
    assert row.split()[:2] == ["v1", "pending"] and row.endswith("Apply apps/web.yaml")
    # The same file again: nothing to commit. A change: the next revision.
    code, out, _ = invoke(served_cp, "apply", "-f", write(tmp_path, WEB))
    assert (code, out.splitlines()[-1]) == (ExitCode.OK, "✔ web is unchanged (v1)")
    code, out, err = invoke(
        served_cp, "apply", "-f", write(tmp_path, WEB.replace("replicas: 2", "replicas: 3"))
    )
    assert code == ExitCode.OK, err
    assert "    replicas: 2 → 3" in out.splitlines()
    assert invoke(served_cp, "history", "web")[1].splitlines()[1].startswith("v2")


def test_an_invalid_file_exits_4_and_commits_nothing(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    head = cp.repo.head()
    bad = write(tmp_path, "name: web\nimage: nginx:1.25\nreplica: 2\n")
    code, out, err = invoke(served_cp, "apply", "-f", bad)
    assert code == ExitCode.DIFF_INVALID
    assert "✖ apps/web.yaml:3: replica: unknown key" in out
    assert "nothing was committed" in err
    code, _, err = invoke(served_cp, "apply", "-f", write(tmp_path, WEB, "other.yaml"))
    assert code == ExitCode.DIFF_INVALID
    assert cp.repo.head() == head
    code, out, _ = invoke(served_cp, "history", "web")
    assert code == ExitCode.CLIENT_ERROR  # no such app: nothing was ever committed


def test_wait_follows_the_app_until_it_runs(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    add_node(cp)  # a node without an agent: nothing will run
    code, _, err = invoke(
        served_cp, "apply", "-f", write(tmp_path, WEB), "--wait", "--timeout", "1"
    )
    assert code == ExitCode.TIMEOUT
    assert "web is not running after 1s" in err


@pytest.mark.docker
def test_apply_wait_runs_the_app_then_rolls_out_a_change(
    cluster: Any, web_image: str, tmp_path: Path
) -> None:
    spec = f"name: web\nimage: {web_image}\nrollout:\n  min_healthy_time: 1s\n"
    done = cluster.docklet("apply", "-f", write(tmp_path, spec), "--wait")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert "✔ Running on node-1 (1/1)" in done.stdout
    changed = spec + "env:\n  GREETING: hello\n"
    done = cluster.docklet("apply", "-f", write(tmp_path, changed), "--wait")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert "~ web: update → v2, rolls out (canary first)" in out
    assert out[-1] == "✔ web v2 is stable (1/1)"
    (c,) = [c for c in cluster.containers("web", all=False)]
    assert "GREETING=hello" in c.attrs["Config"]["Env"]
