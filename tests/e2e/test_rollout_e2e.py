"""The seed walkthrough's steps 6-8 for real: CLI, CP and agent processes on the real engine."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import dockerlab
import pytest
from conftest import RUN_ID, Cluster, free_port, wait_for

pytestmark = pytest.mark.docker


class Poller:
    """Hits the app's published port all along, counting the requests that fail."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                self.ok += 1
            except OSError:
                self.failed += 1

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def ps_row(cluster: Cluster) -> list[str]:
    result = cluster.docklet("ps")
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "REVISION", "DESIRED", "ACTUAL", "NODE", "STATUS"]
    return row.split()


def test_seed_steps_6_to_8_update_canary_and_automatic_rollback(
    cluster: Cluster, web_image: str, web_image_v2: str, registry: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    run = cluster.docklet("run", web_image, "--name", "web", "-p", f"127.0.0.1:{port}:80")
    assert run.returncode == 0, run.stderr
    wait_for(lambda: cluster.app("web")["status"] == "stable", 20, "v1 to be stable")

    # 6. The update: a canary, verified, then stable. ps shows v2 rolling while it rolls.
    seen: list[list[str]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.1):
            seen.append(ps_row(cluster))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Poller(url) as good:
        update = cluster.docklet("update", "web", "--image", web_image_v2, timeout=120)
    watching.set()
    watcher.join()
    assert update.returncode == 0, update.stdout + update.stderr
    assert update.stdout.startswith("🔥 Triggering rollout...\n")
    assert "✔ web v2 is stable (1/1)" in update.stdout
    assert ["web", "v2", "running", "running", "node-1", "rolling_update"] in seen
    # 7. Success path.
    assert ps_row(cluster) == ["web", "v2", "running", "running", "node-1", "stable"]
    assert web_image_v2 in urllib.request.urlopen(url, timeout=5).read().decode()
    (container,) = [c for c in cluster.containers("web") if c.status == "running"]
    assert container.labels["docklet.revision"] == "2"

    # 8. An image that does not exist: the canary fails, v2 is restored, nothing broke.
    missing = f"{registry}/docklet-test/nginx:does-not-exist-{RUN_ID}"
    with Poller(url) as bad:
        failed = cluster.docklet("update", "web", "--image", missing, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout + failed.stderr
    assert "🔥 Triggering rollout..." in out
    assert "✖ Canary failed" in out and "↩ Rolling back to previous revision" in out
    assert "✖ web v3 rolled back:" in out
    assert bad.failed == 0 and bad.ok > 0  # the old revision was never interrupted
    wait_for(lambda: ps_row(cluster)[5] == "stable", 20, "the app to be stable again")
    assert ps_row(cluster) == ["web", "v2", "running", "running", "node-1", "stable"]
    assert "web: desired v3 failed, running v2" in cluster.docklet("ps").stdout
    # A good update with a published host port is stop-first: a gap of a moment, the way
    # Swarm's default update is; benchmarks/rollout.py measures it.
    assert good.ok > 0

    history = cluster.docklet("history", "web").stdout
    assert "v3" in history and "failed" in history and "stable" in history
    assert cluster.client.get("/api/health") == {"status": "ok"}


def wait_rollout(cluster: Cluster, app: str, statuses: set[str], timeout: float = 60) -> Any:
    def done() -> Any:
        rollouts = cluster.client.get(f"/api/apps/{app}/rollouts")
        return rollouts[0] if rollouts and rollouts[0]["status"] in statuses else None

    return wait_for(done, timeout, f"{app}'s rollout to be {' or '.join(sorted(statuses))}")


def run_stable(cluster: Cluster, image: str, name: str, **spec: Any) -> None:
    cluster.client.post("/api/apps", {"name": name, "image": image, **spec})
    wait_for(lambda: cluster.app(name)["status"] == "stable", 30, f"{name} to be stable")
    wait_for(
        lambda: any(
            h["status"] == "stable" for h in cluster.client.get(f"/api/apps/{name}/revisions")
        ),
        30,
        f"{name} v1 to be verified",
    )


FAST = {"min_healthy_time": "1s"}


def test_a_canary_that_exits_after_a_second_is_rolled_back_with_its_exit_code(
    cluster: Cluster, web_image: str
) -> None:
    run_stable(cluster, web_image, "crashy", rollout={"min_healthy_time": "4s"})
    cluster.client.post(
        "/api/apps/crashy/update",
        {"command": ["sh", "-c", "echo boom >&2; sleep 1; exit 3"], "restart": "no"},
    )
    r = wait_rollout(cluster, "crashy", {"rolled_back", "rollback_failed"})
    assert r["status"] == "rolled_back"
    assert r["reason"].startswith("exited with code 3 after")
    assert r["evidence"]["exit_code"] == 3 and "boom" in (r["evidence"]["logs"] or "")
    status = cluster.docklet("rollout", "status", "crashy").stdout
    assert "rolled_back" in status and "boom" in status
    running = [c for c in cluster.containers("crashy") if c.status == "running"]
    assert [c.labels["docklet.revision"] for c in running] == ["1"]


def test_a_git_push_that_changes_the_image_is_rolled_out(
    cluster: Cluster, web_image: str, web_image_v2: str, tmp_path: Any
) -> None:
    import subprocess

    run_stable(cluster, web_image, "pushed", rollout=FAST)
    work = tmp_path / "clone"
    # Bob, whatever identity the environment gives (CI sets GIT_AUTHOR_NAME).
    bob = {"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.com"}
    env = {**os.environ, **bob, "GIT_COMMITTER_NAME": "Bob", "GIT_COMMITTER_EMAIL": "bob@x"}
    repo = str(tmp_path / "cp" / "repo.git")
    subprocess.run(["git", "clone", "-q", repo, str(work)], check=True, env=env)
    spec = (work / "apps" / "pushed.yaml").read_text().replace(web_image, web_image_v2)
    (work / "apps" / "pushed.yaml").write_text(spec)
    subprocess.run(["git", "-C", str(work), "commit", "-qam", "Bump pushed"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, env=env)
    r = wait_rollout(cluster, "pushed", {"stable", "rolled_back"})
    assert (r["status"], r["revision"]) == ("stable", "v2")
    history = cluster.client.get("/api/apps/pushed/revisions")
    assert history[0]["message"] == "Bump pushed" and history[0]["author"].startswith("Bob")


def test_a_control_plane_killed_while_verifying_resumes_and_finishes(
    cluster: Cluster, web_image: str, web_image_v2: str
) -> None:
    run_stable(cluster, web_image, "resumed", rollout={"min_healthy_time": "4s"})
    cluster.client.post("/api/apps/resumed/update", {"image": web_image_v2})
    wait_rollout(cluster, "resumed", {"verifying"}, 30)
    cluster.cp.stop(signal.SIGKILL)
    cluster.start_cp()
    r = wait_rollout(cluster, "resumed", {"stable", "rolled_back", "rollback_failed"}, 60)
    assert r["status"] == "stable"
    containers = cluster.containers("resumed")
    assert len(containers) == 1 and containers[0].labels["docklet.revision"] == "2"


def test_one_apps_long_rollout_does_not_delay_another(
    cluster: Cluster, web_image: str, web_image_v2: str
) -> None:
    run_stable(cluster, web_image, "slow", rollout={"min_healthy_time": "60s"})
    run_stable(cluster, web_image, "quick", rollout=FAST)
    cluster.client.post("/api/apps/slow/update", {"image": web_image_v2})
    wait_rollout(cluster, "slow", {"verifying"}, 30)
    started = time.monotonic()
    result = cluster.docklet("update", "quick", "--image", web_image_v2, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert cluster.client.get("/api/apps/slow/rollouts")[0]["status"] == "verifying"


def test_an_agent_killed_during_the_canary_does_not_fail_the_rollout(
    cluster: Cluster, web_image: str, web_image_v2: str
) -> None:
    run_stable(cluster, web_image, "agentkill", rollout={"min_healthy_time": "4s"})
    cluster.client.post("/api/apps/agentkill/update", {"image": web_image_v2})
    wait_rollout(cluster, "agentkill", {"verifying"}, 30)
    cluster.agent.stop(signal.SIGKILL)
    cluster.start_agent()
    r = wait_rollout(cluster, "agentkill", {"stable", "rolled_back", "rollback_failed"}, 60)
    assert r["status"] == "stable"
    wait_for(
        lambda: [c.labels["docklet.revision"] for c in cluster.containers("agentkill")] == ["2"],
        30,
        "one v2 container and no duplicate",
    )


# A process that ignores SIGTERM: `docker stop` waits out its whole grace period.
IGNORE_TERM = ["sh", "-c", "trap '' TERM; exec httpd -f -p 80 -h /www"]


@pytest.fixture(scope="module")
def slow_stop_image(docker_client: Any, web_image: str) -> Iterator[str]:
    """The web image, stopped with SIGTERM (the test image's own STOPSIGNAL is SIGKILL)."""
    tag = f"docklet-test/slow-stop-e2e:{RUN_ID}"
    dockerfile = f"FROM {web_image}\nSTOPSIGNAL SIGTERM\n".encode()
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile), tag=tag, pull=False, rm=True, forcerm=True
    )
    try:
        yield tag
    finally:
        dockerlab.remove_image(docker_client, tag)


def test_stable_is_said_once_the_previous_revision_no_longer_runs(
    cluster: Cluster, slow_stop_image: str
) -> None:
    spec = {"command": IGNORE_TERM, "stop_grace_period": "3s", "rollout": FAST}
    run_stable(cluster, slow_stop_image, "slowstop", **spec)
    update = cluster.docklet("update", "slowstop", "-e", "V=2", timeout=120)
    # Right after the verdict, as `docker ps` would show it.
    running = [c.labels["docklet.revision"] for c in cluster.containers("slowstop", all=False)]
    assert update.returncode == 0, update.stdout + update.stderr
    assert update.stdout.endswith("✔ slowstop v2 is stable (1/1)\n")
    assert running == ["2"]
    assert "… v2 runs on every replica; stopping the previous revision" in update.stdout


def test_a_crash_loop_says_its_exit_code_and_asking_again_says_it_failed(
    cluster: Cluster, web_image: str
) -> None:
    run_stable(cluster, web_image, "cr", rollout={"min_healthy_time": "4s"})
    crash = ("update", "cr", "--command", "sh -c 'sleep 1; exit 1'")
    first = cluster.docklet(*crash, timeout=120)
    assert first.returncode == 1, first.stdout + first.stderr
    said = r"✖ cr v2 rolled back: exited with code 1 after \d+s, restarted \d+ times?\n"
    assert re.fullmatch(said, first.stderr)
    again = cluster.docklet(*crash, timeout=60)
    assert again.returncode == 1, again.stdout + again.stderr
    assert again.stdout == ""
    assert again.stderr.startswith("✖ cr v2 is unchanged and its rollout rolled_back: exited with")
    assert again.stderr.endswith("; v1 runs. Try it again with: docklet rollout retry cr\n")
