"""Upstream mode on the real Docker engine: a push to the team's repository deploys.

A real `docklet-cp` process follows a bare repository (file://, a real Git
repository the test pushes to with `git`), a real agent runs on the real
engine; the push is announced by a GitHub-signed webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.docker

SECRET = "e2e-webhook-secret"


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Pat",
        "GIT_AUTHOR_EMAIL": "pat@example.com",
        "GIT_COMMITTER_NAME": "Pat",
        "GIT_COMMITTER_EMAIL": "pat@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """The team's repository, with a first commit and no apps yet."""
    bare = tmp_path / "team.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    git("clone", "-q", str(bare), str(tmp_path / "work"), cwd=tmp_path)
    (tmp_path / "work" / "README.md").write_text("deployment files\n")
    git("add", "-A", cwd=tmp_path / "work")
    git("commit", "-q", "-m", "start", cwd=tmp_path / "work")
    git("push", "-q", "origin", "HEAD:main", cwd=tmp_path / "work")
    return bare


@pytest.fixture
def upstream_cluster(
    tmp_path: Path, docker_client: Any, web_image: str, upstream: Path
) -> Iterator[Cluster]:
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET)
    c = Cluster(tmp_path, docker_client)
    c.cp.args += [
        "--git-url",
        f"file://{upstream}",
        "--git-webhook-secret-file",
        str(secret),
        "--git-poll",
        "600",  # only the webhook can bring the push in time
    ]
    try:
        c.start_cp()
        c.start_agent()
        c.login()
        yield c
    finally:
        c.close()


def test_a_push_to_the_upstream_deploys_a_container(
    upstream_cluster: Cluster, upstream: Path, web_image: str, tmp_path: Path
) -> None:
    cluster = upstream_cluster
    head = git("rev-parse", "main", cwd=upstream).strip()
    wait_for(lambda: cluster.client.get("/api/state/sync")["synced"] == head, 20, "first fetch")
    port = free_port()
    work = tmp_path / "work"
    (work / "apps").mkdir()
    (work / "apps" / "web.yaml").write_text(
        f"name: web\nimage: {web_image}\nports:\n  - 127.0.0.1:{port}:80\n"
    )
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "Deploy web", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    sha = git("rev-parse", "main", cwd=upstream).strip()

    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={mac}",
    }
    sent = time.monotonic()
    hook = urllib.request.Request(f"{cluster.url}/api/hooks/git", body, headers, method="POST")
    with urllib.request.urlopen(hook, timeout=10) as answer:
        assert answer.status == 202
    wait_for(lambda: cluster.app("web"), 10, "the app from the push")
    synced_after = time.monotonic() - sent
    wait_for(
        lambda: [c for c in cluster.containers("web") if c.status == "running"],
        60,
        "web to run",
    )
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    assert web_image in page
    app = cluster.app("web")
    assert app is not None and app["revision"] == "v1"
    print(f"webhook → app known: {synced_after * 1000:.0f} ms")

    # `docklet update` commits to the upstream, with the caller as the author.
    done = cluster.docklet("update", "web", "--replicas", "1", "--env", "MODE=blue", "--detach")
    assert done.returncode == 0, done.stderr
    assert "MODE: blue" in git("show", "main:apps/web.yaml", cwd=upstream)
    assert "Docklet-Token: test" in git("log", "-1", "--format=%B", "main", cwd=upstream)
