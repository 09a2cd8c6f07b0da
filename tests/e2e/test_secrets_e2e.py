"""Secrets for real: the CLI, the CP and agent processes, the real Docker engine.

A canary value is set as a secret, reaches the container (as env and as a file, seen
with `docker exec`, never through the container's logs), and then is looked for in every
place it must not be: Git (every object), the CP's and the agent's logs, events, every
GET answer, `docklet ps --json`, rollout evidence, the SQLite file's bytes. A new value
rolls out as a new revision; `docklet rollback` returns the old one.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import pytest
from conftest import BIN, Cluster, wait_for

pytestmark = pytest.mark.docker

FAST = {"min_healthy_time": "1s"}


def docklet(cluster: Cluster, *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [str(BIN / "docklet"), "--cp", cluster.url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKLET_TOKEN": cluster.client.token or ""},
    )


def running(cluster: Cluster, app: str) -> Any:
    """The app's one running container, once there is exactly one."""
    found = [c for c in cluster.containers(app, all=False) if c.status == "running"]
    return found[0] if len(found) == 1 else None


def seen_inside(container: Any) -> tuple[str, str, str]:
    """The env value, the file's contents and its mode, as the container sees them."""

    def run(*cmd: str) -> str:
        code, out = container.exec_run(list(cmd))
        assert code == 0, out
        return out.decode()

    return (
        run("sh", "-c", 'printf %s "$DB_PASSWORD"'),
        run("cat", "/run/secrets/db-password"),
        run("stat", "-c", "%a %u", "/run/secrets/db-password").strip(),
    )


def wait_value(cluster: Cluster, app: str, value: str) -> Any:
    def there() -> Any:
        container = running(cluster, app)
        return container if container and seen_inside(container)[0] == value else None

    return wait_for(there, 60, f"{app}'s container to run with the expected value")


def wait_stable(cluster: Cluster, app: str, revision: str) -> None:
    def done() -> bool:
        view = cluster.client.get(f"/api/apps/{app}")
        return view["revision"] == revision and view["status"] == "stable"

    wait_for(done, 90, f"{app} {revision} to be stable")


def every_get(cluster: Cluster, app: str) -> str:
    """Every GET answer of the API about this cluster and app, as one text."""
    c = cluster.client
    answers = [
        c.get(path)
        for path in (
            "/api/version",
            "/api/state/apps",
            "/api/state/nodes",
            "/api/state/sync",
            "/api/secrets",
            "/api/events?limit=1000",
            f"/api/apps/{app}",
            f"/api/apps/{app}/revisions",
            f"/api/apps/{app}/rollouts",
        )
    ]
    answers += [c.get(f"/api/apps/{app}/rollouts/{r['id']}") for r in answers[-1]]
    metrics = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {c.token}", f"{cluster.url}/metrics"],
        capture_output=True,
        text=True,
    ).stdout
    return json.dumps(answers) + metrics


def git_objects(cluster: Cluster) -> bytes:
    """Every object of the CP's repository (commits, trees, blobs, notes), uncompressed."""
    repo = str(cluster.tmp / "cp" / "repo.git")
    return subprocess.run(
        ["git", "--git-dir", repo, "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    ).stdout


def database_bytes(cluster: Cluster) -> bytes:
    data = cluster.tmp / "cp"
    return b"".join(p.read_bytes() for p in data.glob("docklet.db*"))


def test_a_secret_reaches_its_container_and_nowhere_else_and_rolls_out_and_back(
    cluster: Cluster, web_image: str
) -> None:
    first = f"CANARY-SECRET-{uuid.uuid4().hex}"
    second = f"CANARY-SECRET-{uuid.uuid4().hex}"
    made = docklet(cluster, "secret", "set", "db-password", stdin=first)
    assert made.returncode == 0, made.stderr
    outputs = [made.stdout, made.stderr]
    spec = {
        "name": "vault",
        "image": web_image,
        "env": {"PLAIN": "x", "DB_PASSWORD": {"secret": "db-password"}},
        "secrets": [{"name": "db-password"}],
        "rollout": FAST,
    }
    cluster.client.post("/api/apps", spec)
    container = wait_value(cluster, "vault", first)
    assert seen_inside(container) == (first, first, "400 0")
    wait_stable(cluster, "vault", "v1")

    # A new value: a new revision, canaried like any change.
    changed = docklet(cluster, "secret", "set", "db-password", stdin=second)
    assert changed.returncode == 0 and "used by vault" in changed.stdout, changed.stderr
    wait_stable(cluster, "vault", "v2")
    assert seen_inside(wait_value(cluster, "vault", second))[:2] == (second, second)
    rollouts = cluster.client.get("/api/apps/vault/rollouts")
    assert rollouts[0]["status"] == "stable" and rollouts[0]["revision"] == "v2"

    # Rolling back returns the old value (the revision recorded its version).
    back = docklet(cluster, "rollback", "vault")
    assert back.returncode == 0, back.stderr
    wait_stable(cluster, "vault", "v3")
    assert seen_inside(wait_value(cluster, "vault", first))[:2] == (first, first)
    outputs += [changed.stdout, changed.stderr, back.stdout, back.stderr]

    listed = docklet(cluster, "secret", "list", "--json")
    assert json.loads(listed.stdout)[0]["apps"] == ["vault"]
    ps = docklet(cluster, "ps", "--json")
    outputs += [listed.stdout, ps.stdout, ps.stderr, docklet(cluster, "history", "vault").stdout]

    places = {
        "the CLI's output": "\n".join(outputs),
        "an API answer": every_get(cluster, "vault"),
        "the CP's log": cluster.cp.log.read_text(),
        "the agent's log": cluster.agent.log.read_text(),
    }
    for value in (first, second):
        for where, text in places.items():
            assert value not in text, f"a secret value is in {where}"
        assert value.encode() not in git_objects(cluster), "a secret value is in Git"
        assert value.encode() not in database_bytes(cluster), "a secret value is in SQLite"
    # The container's own logs are the app's business; its env never went through them.
    assert first not in running(cluster, "vault").logs().decode(errors="replace")


def test_a_secret_file_docker_cannot_write_fails_the_deploy_and_leaves_no_container(
    cluster: Cluster, web_image: str
) -> None:
    value = f"CANARY-SECRET-{uuid.uuid4().hex}"
    assert docklet(cluster, "secret", "set", "api-key", stdin=value).returncode == 0
    spec = {  # /bin/busybox is a file: Docker cannot make it a folder
        "name": "badfile",
        "image": web_image,
        "env": {"API_KEY": {"secret": "api-key"}},
        "secrets": [{"name": "api-key", "target": "/bin/busybox/api-key"}],
    }
    cluster.client.post("/api/apps", spec)

    def failed() -> Any:
        view = cluster.client.get("/api/apps/badfile")
        return view if view["errors"] or view["last_error"] else None

    view = wait_for(failed, 60, "the deploy to fail")
    # Docker's words, in the container's error or the app's last error (whichever the
    # view showed first: under load the second may not be there yet).
    said = json.dumps([view["errors"], view["last_error"]])
    assert "/bin/busybox/api-key: not a directory" in said
    assert not cluster.containers("badfile")  # never started without its files
    text = json.dumps(view) + every_get(cluster, "badfile") + cluster.agent.log.read_text()
    assert value not in text and value not in cluster.cp.log.read_text()
