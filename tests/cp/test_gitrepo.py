"""The desired-state repository: real bare repositories, real `git` next to Docklet."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from docklet.common.errors import RefMoved
from docklet.cp.desired.gitrepo import Changes, GitRepo

ALICE = "Alice <alice@example.com>"


def git(*args: str, cwd: Path | None = None, input: str | None = None, **env: str) -> str:
    """The git CLI as a user runs it, isolated from this machine's git config."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "Bob",
            "GIT_AUTHOR_EMAIL": "bob@example.com",
            "GIT_COMMITTER_NAME": "Bob",
            "GIT_COMMITTER_EMAIL": "bob@example.com",
            **env,
        },
    )
    assert result.returncode == 0, f"git {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout.strip()


def put(path: str, content: bytes) -> Callable[[dict[str, bytes]], Changes]:
    return lambda files: {path: content}


def spec(name: str, image: str = "nginx:1.27") -> bytes:
    return f"name: {name}\nimage: {image}\n".encode()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo.git")


def commit_count(path: Path) -> int:
    return int(git("--git-dir", str(path), "rev-list", "--count", "refs/heads/main"))


def test_first_commit_creates_branch_main(repo: GitRepo) -> None:
    assert repo.head() is None
    sha = repo.commit(put("apps/web.yaml", spec("web")), "Create app web", ALICE)
    assert sha is not None and repo.head() == sha
    assert git("--git-dir", str(repo.path), "rev-parse", "main") == sha
    assert git("--git-dir", str(repo.path), "symbolic-ref", "HEAD") == "refs/heads/main"
    commit = repo.read(sha)
    assert commit.author == ALICE
    assert commit.message == "Create app web"
    assert commit.files == {"apps/web.yaml": spec("web")}


def test_edit_sees_the_files_at_the_head(repo: GitRepo) -> None:
    repo.commit(put("apps/web.yaml", spec("web")), "one", ALICE)
    seen: list[dict[str, bytes]] = []

    def edit(files: dict[str, bytes]) -> Changes:
        seen.append(dict(files))
        return {"apps/api.yaml": spec("api")}

    sha = repo.commit(edit, "two", ALICE)
    assert seen == [{"apps/web.yaml": spec("web")}]
    assert sha is not None
    assert set(repo.read(sha).files) == {"apps/web.yaml", "apps/api.yaml"}


def test_edit_that_changes_nothing_makes_no_commit(repo: GitRepo) -> None:
    first = repo.commit(put("apps/web.yaml", spec("web")), "Create app web", ALICE)
    assert repo.commit(put("apps/web.yaml", spec("web")), "again", ALICE) is None
    assert repo.commit(lambda files: {"apps/gone.yaml": None}, "delete nothing", ALICE) is None
    assert repo.commit(lambda files: {}, "empty", ALICE) is None
    assert repo.head() == first
    assert commit_count(repo.path) == 1


def test_edit_that_raises_leaves_the_branch_alone(repo: GitRepo) -> None:
    first = repo.commit(put("apps/web.yaml", spec("web")), "Create app web", ALICE)

    def refuse(files: dict[str, bytes]) -> Changes:
        raise ValueError("app web already exists")

    with pytest.raises(ValueError, match="already exists"):
        repo.commit(refuse, "Create app web again", ALICE)
    assert repo.head() == first
    assert commit_count(repo.path) == 1
    # The repository still takes commits afterwards.
    assert repo.commit(put("apps/api.yaml", spec("api")), "Create app api", ALICE)


def test_deleting_a_file(repo: GitRepo) -> None:
    repo.commit(lambda f: {"apps/web.yaml": spec("web"), "apps/api.yaml": spec("api")}, "2", ALICE)
    sha = repo.commit(lambda files: {"apps/web.yaml": None}, "Remove app web", ALICE)
    assert sha is not None
    assert repo.read(sha).files == {"apps/api.yaml": spec("api")}
    assert git("--git-dir", str(repo.path), "ls-tree", "-r", "--name-only", sha) == "apps/api.yaml"


def test_docklet_only_edits_files_under_apps(repo: GitRepo) -> None:
    head = repo.head()
    with pytest.raises(ValueError, match="only edits files under apps/"):
        repo.commit(lambda f: {"README.md": b"# apps\n", "apps/web.yaml": spec("web")}, "x", ALICE)
    assert repo.head() == head


# -- several writers ---------------------------------------------------------------


def _cli_commit(bare: Path, path: str, content: str, index: Path) -> None:
    """Commit one file with git plumbing, moving the branch with update-ref's CAS."""
    gd = ("--git-dir", str(bare))
    env = {"GIT_INDEX_FILE": str(index)}
    for _ in range(500):
        old = git(*gd, "rev-parse", "refs/heads/main")
        git(*gd, "read-tree", old, **env)
        blob = git(*gd, "hash-object", "-w", "--stdin", input=content)
        git(*gd, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", **env)
        tree = git(*gd, "write-tree", **env)
        new = git(*gd, "commit-tree", tree, "-p", old, "-m", f"cli {path}")
        moved = subprocess.run(
            ["git", *gd, "update-ref", "refs/heads/main", new, old], capture_output=True
        )
        if moved.returncode == 0:
            return
        time.sleep(0.005)
    raise AssertionError(f"git update-ref never won for {path}")


def test_concurrent_writers_never_lose_a_commit(tmp_path: Path) -> None:
    bare = tmp_path / "repo.git"
    GitRepo(bare).commit(put("apps/seed.yaml", spec("seed")), "seed", ALICE)
    threads_n, per_thread, cli_n = 4, 12, 8
    errors: list[BaseException] = []

    def docklet_writer(t: int) -> None:
        mine = GitRepo(bare)  # its own instance: its own in-process lock
        try:
            for i in range(per_thread):
                name = f"t{t}-{i}"
                assert mine.commit(put(f"apps/{name}.yaml", spec(name)), f"add {name}", ALICE)
        except BaseException as exc:
            errors.append(exc)

    def cli_writer() -> None:
        try:
            for i in range(cli_n):
                _cli_commit(bare, f"apps/cli-{i}.yaml", f"name: cli-{i}\n", tmp_path / "index")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=docklet_writer, args=(t,)) for t in range(threads_n)]
    workers.append(threading.Thread(target=cli_writer))
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors

    head = GitRepo(bare).head()
    assert head is not None
    files = set(GitRepo(bare).read(head).files)
    expected = {"apps/seed.yaml"}
    expected |= {f"apps/t{t}-{i}.yaml" for t in range(threads_n) for i in range(per_thread)}
    expected |= {f"apps/cli-{i}.yaml" for i in range(cli_n)}
    assert files == expected, f"lost: {sorted(expected - files)}"
    assert commit_count(bare) == 1 + threads_n * per_thread + cli_n
    assert not (bare / "refs" / "heads" / "main.lock").exists()
    fsck = subprocess.run(["git", "--git-dir", str(bare), "fsck", "--strict"], capture_output=True)
    assert fsck.returncode == 0, fsck.stderr


# -- lock files --------------------------------------------------------------------


def lock_file(repo: GitRepo) -> Path:
    return repo.path / "refs" / "heads" / "main.lock"


def test_stale_lock_is_cleared(repo: GitRepo) -> None:
    repo.commit(put("apps/web.yaml", spec("web")), "one", ALICE)
    lock = lock_file(repo)
    lock.write_text("left by a writer that died\n")
    old = time.time() - 120
    os.utime(lock, (old, old))
    sha = repo.commit(put("apps/api.yaml", spec("api")), "two", ALICE)
    assert sha is not None and repo.head() == sha
    assert not lock.exists()


def test_held_lock_makes_the_commit_fail_without_touching_it(repo: GitRepo) -> None:
    first = repo.commit(put("apps/web.yaml", spec("web")), "one", ALICE)
    lock = lock_file(repo)
    lock.write_text("")  # another writer holds the branch right now
    with pytest.raises(RefMoved):
        repo.commit(put("apps/api.yaml", spec("api")), "two", ALICE)
    assert repo.head() == first
    assert lock.exists(), "the other writer's lock must be left alone"


def test_commit_retries_until_a_held_lock_is_released(repo: GitRepo) -> None:
    repo.commit(put("apps/web.yaml", spec("web")), "one", ALICE)
    lock = lock_file(repo)
    lock.write_text("")
    release = threading.Timer(0.3, lock.unlink)
    release.start()
    try:
        sha = repo.commit(put("apps/api.yaml", spec("api")), "two", ALICE)
    finally:
        release.join()
    assert sha is not None and repo.head() == sha
    assert set(repo.read(sha).files) == {"apps/web.yaml", "apps/api.yaml"}


# -- git push from a user's clone -------------------------------------------------------


def test_push_from_a_clone_is_visible(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit(put("apps/web.yaml", spec("web")), "Create app web", ALICE)
    work = tmp_path / "work"
    git("clone", "-q", str(repo.path), str(work))
    (work / "apps" / "api.yaml").write_bytes(spec("api"))
    git("add", "apps/api.yaml", cwd=work)
    git("commit", "-q", "-m", "Add api", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)

    pushed = git("rev-parse", "HEAD", cwd=work)
    assert repo.head() == pushed  # the same instance, opened before the push
    commit = repo.read(pushed)
    assert commit.author == "Bob <bob@example.com>"
    assert commit.message == "Add api"
    assert set(commit.files) == {"apps/web.yaml", "apps/api.yaml"}

    # Docklet's next commit builds on the pushed one; the clone fast-forwards to it.
    sha = repo.commit(put("apps/web.yaml", spec("web", "nginx:1.28")), "Update web", ALICE)
    git("pull", "-q", "--ff-only", cwd=work)
    assert git("rev-parse", "HEAD", cwd=work) == sha
    assert (work / "apps" / "web.yaml").read_bytes() == spec("web", "nginx:1.28")


def test_first_push_to_a_new_repository_creates_main(repo: GitRepo, tmp_path: Path) -> None:
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work))
    (work / "apps").mkdir()
    (work / "apps" / "web.yaml").write_bytes(spec("web"))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "Initial apps", cwd=work)
    git("push", "-q", str(repo.path), "main", cwd=work)
    assert repo.head() == git("rev-parse", "HEAD", cwd=work)
    assert repo.commit(put("apps/api.yaml", spec("api")), "Add api", ALICE)


def test_commits_continue_after_git_gc_packs_the_refs(repo: GitRepo) -> None:
    repo.commit(put("apps/web.yaml", spec("web")), "one", ALICE)
    git("--git-dir", str(repo.path), "gc", "-q")
    packed = git("--git-dir", str(repo.path), "rev-parse", "main")
    assert repo.head() == packed
    sha = repo.commit(put("apps/api.yaml", spec("api")), "two", ALICE)
    assert sha is not None
    assert git("--git-dir", str(repo.path), "rev-parse", "main") == sha
    assert git("--git-dir", str(repo.path), "rev-parse", f"{sha}^") == packed
