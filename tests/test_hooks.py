"""The pre-receive hook: invalid specs, rewritten history and a deleted main are refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

from docklet.controlplane import ControlPlane


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    return subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True)


def clone(cp: ControlPlane, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(cp.config.repo_path), str(work)], check=True)
    git(work, "checkout", "-q", "-b", "main")
    (work / "apps").mkdir()
    return work


def test_a_push_with_an_invalid_spec_is_refused_whole_with_lines_to_act_on(
    cp: ControlPlane, tmp_path: Path
) -> None:
    work = clone(cp, tmp_path)
    (work / "apps" / "good.yaml").write_text("name: good\nimage: nginx:1.25\n")
    (work / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\nreplicas: lots\n")
    (work / "apps" / "notes.txt").write_text("hello\n")
    (work / "apps" / "link.yaml").symlink_to("good.yaml")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "bad")
    pushed = git(work, "push", "origin", "main")
    assert pushed.returncode != 0
    assert "remote:   apps/web.yaml:3: replicas:" in pushed.stderr
    assert "apps/notes.txt" in pushed.stderr and "apps/link.yaml" in pushed.stderr
    assert "pre-receive hook declined" in pushed.stderr
    assert cp.repo.head() is None  # atomically: not even the good file landed

    (work / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\nreplicas: 2\n")
    (work / "apps" / "notes.txt").unlink()
    (work / "apps" / "link.yaml").unlink()
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "good")
    pushed = git(work, "push", "origin", "main")
    assert pushed.returncode == 0, pushed.stderr
    assert cp.repo.head() == git(work, "rev-parse", "HEAD").stdout.strip()


def test_history_is_kept_no_force_push_no_deleting_main(cp: ControlPlane, tmp_path: Path) -> None:
    work = clone(cp, tmp_path)
    (work / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "one")
    assert git(work, "push", "origin", "main").returncode == 0
    head = cp.repo.head()
    git(work, "commit", "-q", "--amend", "-m", "rewritten")
    forced = git(work, "push", "-f", "origin", "main")
    assert forced.returncode != 0 and "non-fast-forward" in forced.stderr
    deleted = git(work, "push", "origin", ":main")
    assert deleted.returncode != 0 and "deletion prohibited" in deleted.stderr
    assert cp.repo.head() == head
