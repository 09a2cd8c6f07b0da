"""The pre-receive hook: invalid specs, rewritten history and a deleted main are refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from docklet.cp.controller import Controller
from docklet.cp.service.controlplane import ControlPlane


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


# -- over HTTP -------------------------------------------------------------------------


def test_clone_and_push_over_http_with_the_api_token(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    import threading
    import time

    from conftest import ADMIN_TOKEN

    from docklet.common.status import TokenScope
    from docklet.cp.store import tokens

    stop = threading.Event()
    threading.Thread(target=Controller(cp).watch_repo, args=(stop,), daemon=True).start()
    with cp.store.write() as db:
        read = tokens.create(db, "reader", TokenScope.READ, "test")
    host = served_cp.removeprefix("http://")
    try:
        # No credentials: git is asked for them (401 with WWW-Authenticate), and has none.
        anon = git(tmp_path, "-c", "credential.helper=", "clone", f"{served_cp}/git/apps.git", "a")
        assert anon.returncode != 0
        assert git(
            tmp_path, "clone", f"http://x:{ADMIN_TOKEN}x@{host}/git/apps.git", "wrong"
        ).returncode
        cp.apps.create({"name": "web", "image": "nginx:1.25"}, "t <t@t>")
        ro = tmp_path / "ro"
        cloned = git(tmp_path, "clone", "-q", f"http://x:{read}@{host}/git/apps.git", str(ro))
        assert cloned.returncode == 0, cloned.stderr
        assert (ro / "apps" / "web.yaml").exists()
        (ro / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\nreplicas: 3\n")
        git(ro, "commit", "-qam", "scale")
        refused = git(ro, "push", "origin", "main")
        assert refused.returncode != 0  # a read token cannot push (403)
        assert read not in refused.stderr

        rw = tmp_path / "rw"
        url = f"http://admin:{ADMIN_TOKEN}@{host}/git/apps.git"
        assert (
            git(tmp_path, "-c", "protocol.version=2", "clone", "-q", url, str(rw)).returncode == 0
        )
        (rw / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\nreplicas: 0\n")
        git(rw, "commit", "-qam", "scale to zero")
        bad = rw / "apps" / "bad.yaml"
        bad.write_text("name: bad\nimage: nginx:1.25\nreplicas: lots\n")
        git(rw, "add", "-A")
        git(rw, "commit", "-qm", "bad")
        pushed = git(rw, "push", "origin", "main")
        assert pushed.returncode != 0 and "apps/bad.yaml:3: replicas" in pushed.stderr
        bad.unlink()
        git(rw, "commit", "-qam", "no bad")
        started = time.monotonic()
        pushed = git(rw, "push", "-q", "origin", "main")
        pushed_at = time.monotonic()
        assert pushed.returncode == 0, pushed.stderr
        while cp.views.app("web")["replicas"] != 0:
            assert time.monotonic() - pushed_at < 5, "the push was not synced"
            time.sleep(0.005)
        synced_at = time.monotonic()
        print(f"push took {pushed_at - started:.3f}s; push→revision {synced_at - pushed_at:.3f}s")
        assert synced_at - pushed_at < 1.0
    finally:
        stop.set()


# -- refs: main is desired state, refs/docklet/* and refs/notes/docklet are the CP's ---------


def pushed_main(cp: ControlPlane, tmp_path: Path) -> Path:
    """A clone whose main is pushed, with one app the CP recorded as deployed."""
    work = clone(cp, tmp_path)
    (work / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.25\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "web")
    assert git(work, "push", "origin", "main").returncode == 0
    head = cp.repo.head()
    assert head is not None
    cp.repo.record_outcome("web", head, (head, "rolled back: the CP's own note"))
    return work


def refs(cp: ControlPlane) -> dict[str, str]:
    return {ref: str(cp.repo.repo.references[ref].target) for ref in cp.repo.repo.references}


@pytest.mark.parametrize(
    "refspec,said",
    [
        ("HEAD:refs/docklet/deployed/web", "refs/docklet/deployed/web is the control plane's"),
        ("HEAD:refs/docklet/deployed/new", "refs/docklet/deployed/new is the control plane's"),
        ("HEAD:refs/docklet/anything", "refs/docklet/anything is the control plane's"),
        ("+HEAD:refs/notes/docklet", "refs/notes/docklet is the control plane's"),
        (":refs/docklet/deployed/web", "refs/docklet/deployed/web is the control plane's"),
        ("HEAD:refs/tags/v1", "refs/tags/v1: only refs/heads/main is desired state"),
        ("HEAD:refs/heads/staging", "refs/heads/staging: only refs/heads/main is desired state"),
        ("HEAD:refs/notes/commits", "refs/notes/commits: only refs/heads/main is desired state"),
        ("HEAD:refs/pull/1/head", "refs/pull/1/head: only refs/heads/main is desired state"),
    ],
)
def test_only_main_may_be_pushed_and_the_cps_own_refs_are_its_alone(
    cp: ControlPlane, tmp_path: Path, refspec: str, said: str
) -> None:
    work = pushed_main(cp, tmp_path)
    before = refs(cp)
    (work / "apps" / "web.yaml").write_text("name: web\nimage: nginx:1.26\n")
    git(work, "commit", "-qam", "forged")
    pushed = git(work, "push", "origin", refspec)
    assert pushed.returncode != 0, pushed.stderr
    assert f"remote: docklet: push refused: {said}" in pushed.stderr, pushed.stderr
    assert "pre-receive hook declined" in pushed.stderr
    assert refs(cp) == before  # nothing moved, nothing was added
    # Next to a good push of main, the whole push is refused: nothing lands.
    both = git(work, "push", "origin", "main", refspec)
    assert both.returncode != 0 and refs(cp) == before
    assert git(work, "push", "origin", "main").returncode == 0  # main alone: fine


def test_the_cp_still_writes_its_own_refs_after_a_refused_push(
    cp: ControlPlane, tmp_path: Path
) -> None:
    work = pushed_main(cp, tmp_path)
    assert git(work, "push", "origin", "HEAD:refs/notes/docklet").returncode != 0
    head = cp.repo.head()
    assert head is not None
    cp.repo.record_outcome("web", head, (head, "failed: a newer note"))
    assert refs(cp)["refs/docklet/deployed/web"] == head
    assert cp.repo.repo.lookup_note(head, "refs/notes/docklet").message == "failed: a newer note"
